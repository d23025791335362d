"""The GPU path's failure modes, reproduced on the CPU: channels_last colour images through every
pyautoattack attack, cross-rank sums with values on two devices, the graph count of compiled
calls at ragged batch sizes, fp32 where bf16 autocast would round (NEFT's sigma, the head's
logits), the process group's timeout and sync BatchNorm kept out of the compiled graphs."""
import pytest
import torch
import torch.nn as nn

from rtlkit.measure.attacks import APGD, APGDT, FABT, PGD, FoolboxPGD, Square
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.core.models import build
from rtlkit.core.runtime import Runtime

RGB = WRNSpec(10, 1, stem_stride=2)


def rgb_model(classes=5, seed=0):
    torch.manual_seed(seed)
    return build(RGB, classes, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


def rgb_images(n=12, size=16, seed=1):
    """Random colour images labelled by :func:`rgb_model`'s own predictions: every one is clean-correct,
    so every attack attacks every image (pyautoattack skips the misclassified ones)."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, rgb_model()(x).argmax(1)


# --------------------------------------------------------------------------- 1. channels_last into pyautoattack

AA_ATTACKS = [APGD(eps=0.5, n_iter=3, n_restarts=2, norm="l2"), APGD(eps=0.1, n_iter=3, n_restarts=1, norm="linf"),
              APGDT(eps=0.5, n_iter=3, n_target_classes=2, norm="l2"), APGDT(eps=0.1, n_iter=3, n_target_classes=2),
              Square(eps=0.5, n_queries=6, norm="l2"), Square(eps=0.1, n_queries=6, norm="linf"),
              FABT(eps=0.5, n_iter=3, n_target_classes=2, norm="l2"), FABT(eps=0.1, n_iter=3, n_target_classes=2)]


@pytest.mark.parametrize("attack", AA_ATTACKS, ids=lambda a: a.label.split(" eps")[0])
def test_every_pyautoattack_attack_takes_channels_last_colour_images(attack):
    """What a CUDA runtime hands the attacks (channels_last is on by default there): each returns
    points in the threat model."""
    rt = Runtime("cpu", channels_last=True)
    model = rt.prepare(rgb_model())
    x, y = rgb_images()
    xc = rt.inputs(x)
    assert xc.is_contiguous(memory_format=torch.channels_last) and not xc.is_contiguous()
    x_adv = attack(model, xc, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if attack.norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= attack.eps * (1 + 1e-4) + 1e-6
    assert float((x_adv - x).abs().max()) > 0   # it attacked (every image is clean-correct)


def test_a_channels_last_card_and_evaluation_run_the_whole_cascade_on_colour_images():
    from rtlkit.measure.card import Card, cascade
    from rtlkit.core.data import DatasetInfo, ImageData
    from rtlkit.measure.evaluate import evaluate
    rt = Runtime("cpu", channels_last=True)
    model = rt.prepare(rgb_model())
    x, y = rgb_images(n=10)
    for norm, eps in (("l2", 0.5), ("linf", 0.1)):
        card = Card(eps=eps, norm=norm, pgd_steps=2, apgd_iters=2, targets=2, fab_iters=2, square_queries=4)
        table = cascade(model, (x, y), card, rt, batch_size=4)
        assert len(table) == 10 and {"took[APGD-T]", "took[Square]", "took[FAB-T]"} <= set(table.columns)
    info = DatasetInfo("rgb-random", tuple(map(str, range(5))), 3, 16, "cifar")
    data = ImageData((x * 255).to(torch.uint8), y, info)
    attacks = [a for a in AA_ATTACKS if not isinstance(a, FABT)] + [PGD(0.1, 2, 0.05), FoolboxPGD(0.1, 2, 0.05)]
    r = evaluate(model, data, attacks, rt, batch_size=4, progress=False)
    assert len(r.examples) == 10 and len(r.per_attack) == len(attacks)


# --------------------------------------------------------------------------- 3. a bounded number of graphs

def _graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def _compiled_rgb_model():
    import torch._dynamo
    torch._dynamo.reset()
    rt = Runtime("cpu", compile=True, compile_backend="aot_eager")
    return rt, rt.prepare(rgb_model())


def test_batch_buckets_are_few_powers_of_two():
    from rtlkit.core.runtime import MIN_BUCKET, batch_bucket
    assert [batch_bucket(n) for n in (1, 15, 16, 17, 500, 512, 513, 904, 2880)] == \
        [MIN_BUCKET, 16, 16, 32, 512, 512, 1024, 1024, 4096]
    assert len({batch_bucket(n) for n in range(1, 4097)}) == 9   # 16 ... 4,096


def test_the_card_compiles_a_bounded_number_of_graphs_whatever_its_survivor_counts():
    """The cascade's survivors (our PGD's pruning, APGD's restarts, APGD-T's targets, Square's
    queries, the card's last batches) come in many sizes; each compiled block sees only the
    buckets up to the card's batch (16, 32, 64 for a batch of 40), with and without an input gradient."""
    from rtlkit.measure.card import Card, cascade
    rt, model = _compiled_rgb_model()
    x, y = rgb_images(n=90)
    start = _graphs()
    card = Card(eps=0.5, norm="l2", pgd_steps=3, apgd_iters=4, apgd_restarts=2, targets=2, fab_iters=3, square_queries=10)
    table = cascade(model, (x, y), card, rt, batch_size=40)
    assert table.clean_correct.all()
    assert 0 < _graphs() - start <= model.n_blocks * 3 * 2, _graphs() - start


def test_certification_tails_and_ragged_feature_passes_compile_a_bounded_number_of_graphs():
    """Certification draws N noisy copies per image in batches, so each image count leaves its own
    tail (here 9, 51, 29, 50, 6 and 26 rows besides full batches of 64); a feature pass's last batch
    is ragged. Each compiled block sees the buckets 16, 32 and 64 alone."""
    from rtlkit.measure.smoothing import Smoothing, certify
    rt, model = _compiled_rgb_model()
    x, _ = rgb_images(n=9)
    start = _graphs()
    for n in (5, 7, 9):
        certify(model, x[:n], Smoothing(sigma=0.25, n0=10, n=181, batch=64), 5)
    assert 0 < _graphs() - start <= model.n_blocks * 3, _graphs() - start
    rt, model = _compiled_rgb_model()
    x, _ = rgb_images(n=90)
    start = _graphs()
    with torch.no_grad():
        for n in (90, 75, 61):   # last batches of 10, 35 and 21 rows
            for b in range(0, n, 40):
                model.penultimate(x[b:min(b + 40, n)])
    assert 0 < _graphs() - start <= (model.n_blocks - 1) * 3, _graphs() - start   # the head is not called


def test_bucketed_calls_give_each_row_its_unpadded_result_and_gradient():
    """Padding adds rows of zeros and cuts the output back: in eval mode a row's logits and input
    gradient are those of the eager call; with a BatchNorm training (rows coupled) nothing is padded."""
    rt, model = _compiled_rgb_model()
    eager = rgb_model()
    x, y = rgb_images(n=21)
    for m in (model, eager):
        m.eval()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = model(xa), eager(xb)
    assert la.shape == (21, 5) and torch.allclose(la, lb, atol=1e-5)
    ga, = torch.autograd.grad(torch.nn.functional.cross_entropy(la, y, reduction="sum"), xa)
    gb, = torch.autograd.grad(torch.nn.functional.cross_entropy(lb, y, reduction="sum"), xb)
    assert torch.allclose(ga, gb, atol=1e-5)
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        model(x)
        model.train()
        model(x)
    assert seen == [32, 21]



# --------------------------------------------------------------------------- 2. cross-rank sums on the group's device

def test_all_sum_takes_values_from_two_devices_to_the_groups(monkeypatch):
    """The epoch-end reduction's values: loss and correct totals on the runtime's device, an image
    count made elsewhere. Each goes to the group's device ('meta' stands in for a GPU here) before
    the one all-reduce, which sees a single device."""
    from rtlkit.core import distributed
    seen = []
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "group_device", lambda: torch.device("meta"), raising=False)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, *a, **k: seen.append(t.device))
    loss, correct = torch.zeros((), device="meta"), torch.zeros((), device="meta")
    out = distributed.all_sum(loss, correct, torch.tensor(128.0))
    assert seen == [torch.device("meta")] and all(v.device == torch.device("meta") for v in out)


# --------------------------------------------------------------------------- 4. the process group's timeout

def test_the_process_group_gets_a_long_configurable_timeout(monkeypatch):
    from datetime import timedelta

    from rtlkit.core import distributed
    from rtlkit.core.errors import ConfigError
    got = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: got.append((backend, kw)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RTLKIT_DIST_TIMEOUT_S", raising=False)
    distributed.init("cpu")
    assert got[-1] == ("gloo", {"timeout": timedelta(hours=12)})   # NCCL's own default is 10 minutes
    monkeypatch.setenv("RTLKIT_DIST_TIMEOUT_S", "90")
    distributed.init("cpu")
    assert got[-1][1]["timeout"] == timedelta(seconds=90)
    for bad in ("soon", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("RTLKIT_DIST_TIMEOUT_S", bad)
        with pytest.raises(ConfigError, match="RTLKIT_DIST_TIMEOUT_S"):
            distributed.init("cpu")
    assert len(got) == 2   # a bad value stops before the group is joined


# --------------------------------------------------------------------------- 5. fp32 where bf16 would round

def _cuda_like_mv(monkeypatch):
    """torch.mv as CUDA's autocast runs it (in bf16; the CPU's autocast leaves it in fp32)."""
    mv = torch.mv

    def bf16_mv(a, b):
        if torch.is_autocast_enabled("cpu"):
            return mv(a.bfloat16(), b.bfloat16()).float()
        return mv(a, b)
    monkeypatch.setattr(torch, "mv", bf16_mv)


def test_neft_sigma_is_float32_inside_autocast(monkeypatch):
    from rtlkit.train.methods.neft import NEFT, apply_neft, largest_singular_value, settle
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(64, 48), nn.Conv2d(3, 8, 3))
    layers = apply_neft(nn.Module(), [block], NEFT(beta=0.6))
    for _ in range(3):   # training steps' power iterations, then the exact pair
        for m in layers:
            m.weight
    settle(block)
    block.eval()
    exact = [m.weight.detach().clone() for m in layers]
    assert [largest_singular_value(m) for m in layers] == pytest.approx([0.6, 0.6], abs=1e-5)
    _cuda_like_mv(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = [m.weight.detach().clone() for m in layers]
        block.train()
        for m in layers:   # a training step's power iteration under autocast
            m.weight
    for a, b in zip(under, exact):
        assert torch.equal(a, b)   # sigma = u^T W v in fp32: the layer is exactly beta-Lipschitz


def test_the_heads_logits_are_float32_inside_autocast():
    """bf16 logits round near-equal classes to a tie, and argmax takes the lower class."""
    model = rgb_model()
    x, _ = rgb_images(n=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        z = model.penultimate(x)
    assert logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(logits, model.head.fc(z.float()))


# --------------------------------------------------------------------------- 7. sync BatchNorm out of the graphs

def test_synced_batchnorm_runs_outside_the_compiled_graphs():
    """A synced BN's forward is a collective: it must not be traced into a block's graph (with bf16
    and channels_last around it); the blocks split at it and give the eager model's outputs."""
    import copy

    import torch._dynamo
    from rtlkit.core.distributed import convert_sync_bn, revert_bn
    ops = []

    def recording(gm, inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward
    torch._dynamo.reset()
    model = rgb_model()
    eager = copy.deepcopy(model).train()
    for device in ("cuda", "cpu"):   # SyncBatchNorm (a GPU's), GroupBatchNorm (gloo's)
        ops.clear()
        m = convert_sync_bn(copy.deepcopy(model), device)
        rt = Runtime("cpu", compile=True, compile_backend=recording)
        m = rt.prepare(m).train()
        x, _ = rgb_images(n=16)
        out = m(x)   # one process, no group: the local statistics, as eager
        assert ops and not any("batch_norm" in o for o in ops), device
        assert torch.allclose(out, eager(x), atol=1e-5)
        assert not any(isinstance(b, nn.SyncBatchNorm) for b in revert_bn(m).modules())


def test_a_training_batch_size_runs_unpadded_in_its_attack(syn):
    """A training batch of 48 rows (not a power of two): the step compiles at 48 anyway, and its
    attack (eval mode) runs at 48 too, not padded to 64; other sizes still go to their bucket."""
    from conftest import tiny_model
    from rtlkit.train.loop import AdversarialTraining, train
    rt = Runtime("cpu", compile=True, compile_backend="aot_eager")
    model = tiny_model(seed=1)
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda mod, args: seen.append((mod.training, args[0].shape[0])))
    train(model, syn.take(torch.arange(96)), AdversarialTraining(epochs=1, batch_size=48, attack=PGD(0.1, 1, 0.1)),
          rt, seed=0, progress=False)
    assert set(seen) == {(False, 48), (True, 48)}
    seen.clear()
    with torch.no_grad():
        model.eval()(torch.rand(21, 1, 12, 12))
    assert seen == [(False, 32)]


# --------------------------------------------------------------------------- 6. benchmark rows are what they are called

def test_the_eager_fp32_benchmark_rows_run_without_tf32(tmp_path, monkeypatch):
    """An H100 runs "fp32" convolutions in TF32 unless told not to: the fp32 baseline's rows run with
    cuDNN's and CUDA matmul's TF32 off (the flags are global, so the CPU run shows them), and the
    fast path's rows as configured."""
    from bench import throughput
    seen = []
    real = throughput.timed

    def spy(rt, step, images, warmup, repeats, steps):
        seen.append((rt.amp, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(rt, step, images, 0, 1, 1)
    monkeypatch.setattr(throughput, "timed", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    throughput.main(["--model", "wrn-10-1-s2", "--input", "1x12x12", "--classes", "4", "--batch", "8",
                     "--eval-batch", "8", "--paths", "eager fp32", "--accuracy", "none", "--trained", "none",
                     "--only", "k=1", "--device", "cpu", "--out", str(tmp_path)])
    assert seen == [(False, False, False)] and torch.backends.cudnn.allow_tf32


def test_foolbox_runs_in_the_runtimes_numerics_as_our_pgd_does():
    """Under bf16 autocast our PGD's forwards are bf16; foolbox's must be too (float32 logits), or
    the own / foolbox ratio mixes precision with the attacks' loops."""
    from rtlkit.core.data import DatasetInfo, ImageData
    from rtlkit.measure.evaluate import evaluate

    class Spy(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.autocast = model, []

        def forward(self, x):
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return self.model(x)
    rt = Runtime("cpu", amp=True)
    x, y = rgb_images(n=6)
    data = ImageData((x * 255).to(torch.uint8), y, DatasetInfo("rgb-random", tuple("abcde"), 3, 16, "cifar"))
    for attack in (PGD(0.1, 2, 0.05), FoolboxPGD(0.1, 2, 0.05)):
        spy = Spy(rgb_model())
        evaluate(spy, data, attack, rt, batch_size=6, progress=False)
        assert len(spy.autocast) > 2 and all(spy.autocast), attack.label
