"""CARTL's feature-distance minimisation (rtlkit.train.methods.fdm, Eq. 10): lambda 0 is plain AT bit
for bit (and the same cache entry), the penalty's closed form."""
import math

import pytest
import torch

from rtlkit.measure.attacks import PGD
from rtlkit.train.methods.fdm import FDMTraining, fdm_penalty
from rtlkit.runs.specs import DataSpec, SourceRun
from rtlkit.runs.store import run_dir
from rtlkit.train.loop import AdversarialTraining, train

from conftest import TINY, tiny_model


AT = dict(epochs=2, lr=0.05, batch_size=64, attack=PGD(0.1, 2, 0.05))


def sd(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_fdm_with_lambda_zero_is_plain_at_bit_for_bit(syn):
    a, b = tiny_model(seed=2), tiny_model(seed=2)
    train(a, syn, AdversarialTraining(**AT), seed=5, progress=False)
    train(b, syn, FDMTraining(**AT, lam=0.0, k=2), seed=5, progress=False)
    sa, sb = sd(a), sd(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and the cache treats lambda = 0 as the same run
    plain = SourceRun(DataSpec("synthetic-a"), TINY, AdversarialTraining(**AT))
    assert run_dir(SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(**AT, lam=0.0, k=2))) == run_dir(plain)
    assert run_dir(SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(**AT, lam=0.01, k=2))) != run_dir(plain)


def test_fdm_with_lambda_changes_training(syn):
    a, b = tiny_model(seed=2), tiny_model(seed=2)
    train(a, syn, AdversarialTraining(**AT), seed=5, progress=False)
    train(b, syn, FDMTraining(**AT, lam=0.5, k=2), seed=5, progress=False)
    assert not torch.equal(a.blocks[0][0].conv.weight, b.blocks[0][0].conv.weight)


def test_fdm_penalty_closed_form():
    f1 = torch.zeros(3, 2, 2, 2)
    f2 = torch.zeros(3, 2, 2, 2)
    f2[0, 0, 0, 0] = 3.0
    f2[0, 1, 1, 1] = 4.0            # ||delta_0|| = 5
    f2[2] = 1.0                     # ||delta_2|| = sqrt(8)
    d = 8
    expect = 0.01 / math.sqrt(d) * (5.0 + math.sqrt(8))
    assert float(fdm_penalty(f1, f2, 0.01)) == pytest.approx(expect, rel=1e-6)
