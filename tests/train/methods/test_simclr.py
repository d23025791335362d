"""SimCLR's NT-Xent (rtlkit.train.methods.simclr) against a hand computation."""
import json
import math

import pytest
import torch

from rtlkit.train.methods.simclr import SimCLRTraining, nt_xent, random_resized_crop
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.runs.specs import DataSpec, SourceRun, TransferRun
from rtlkit.runs.cache import get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining
from rtlkit.train.transfer import TransferPolicy


def test_nt_xent_by_hand():
    # image 0 has views a = (1, 0) and b = (0, 1); image 1 has c = (1, 0) and d = (-1, 0).
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])     # a, c
    z2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])    # b, d
    tau = 0.5
    # views in the order a, c, b, d; each row: cosines to the other three in that order, and the
    # slot of its partner. a: c 1, b 0, d -1 (b); c: a 1, b 0, d -1 (d); b: a 0, c 0, d 0 (a);
    # d: a -1, c -1, b 0 (c)
    rows = [([1, 0, -1], 1), ([1, 0, -1], 2), ([0, 0, 0], 0), ([-1, -1, 0], 1)]
    expect = 0.0
    for cos, pos in rows:
        logits = [c / tau for c in cos]
        expect += -logits[pos] + math.log(sum(math.exp(v) for v in logits))
    loss, acc = nt_xent(z1, z2, tau)
    assert float(loss) == pytest.approx(expect / 4)
    assert float(acc) == pytest.approx(1 / 4)       # only b picks its partner (a: a three-way tie, first wins)


def test_nt_xent_is_small_for_matching_views_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    loss_same, acc = nt_xent(z, 3 * z)                           # partners identical up to scale
    loss_rand, _ = nt_xent(z, torch.randn(8, 16, generator=g))
    assert float(acc) == 1.0 and float(loss_same) < float(loss_rand)


def test_simclr_pretrains_with_a_projection_head_that_transfer_drops(runs_root):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    v = random_resized_crop(x)
    assert v.shape == x.shape and 0 <= float(v.min()) and float(v.max()) <= 1
    src = SourceRun(DataSpec("synthetic-a", train_n=128), WRNSpec(10, 1, stem_stride=2),
                    SimCLRTraining(epochs=1, batch_size=32, lr=0.05))
    model = get_or_train(src, Runtime("cpu"), progress=False)
    assert any(k.startswith("projection.") for k in model.state_dict())
    hist = json.loads((run_dir(src) / "train.json").read_text())["history"]
    assert 0 <= hist[0]["train_acc"] <= 1 and math.isfinite(hist[0]["loss"])
    t = TransferRun(src, DataSpec("synthetic-b", train_n=64), TransferPolicy(k="all", bn_affine="train"),
                    StandardTraining(epochs=1, batch_size=32))
    tuned = get_or_train(t, Runtime("cpu"), progress=False)
    assert not any(k.startswith("projection.") for k in tuned.state_dict())
    assert tuned.head.fc.in_features == tuned.feature_dim
