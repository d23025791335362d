"""The GPU path's failure modes, reproduced on the CPU: channels_last colour images through every
pyautoattack attack, cross-rank sums with values on two devices, the graph count of compiled
calls at ragged batch sizes, fp32 where bf16 autocast would round (NEFT's sigma, the head's
logits), the process group's timeout and sync BatchNorm kept out of the compiled graphs."""
import pytest
import torch
import torch.nn as nn

from rtlkit.attacks import APGD, APGDT, FABT, PGD, FoolboxPGD, Square
from rtlkit.models import WRNSpec, build
from rtlkit.runtime import Runtime

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
    from rtlkit.card import Card, cascade
    from rtlkit.data import DatasetInfo, ImageData
    from rtlkit.evaluate import evaluate
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
