"""L-inf Lipschitz heads against closed forms: the L-inf operator norm is the largest row L1 norm,
attained at the sign vector of that row; GroupSort is a 1-Lipschitz sort; a head moves its logits
by at most lipschitz_bound times the feature change."""
import pytest
import torch

from rtlkit import ConfigError
from rtlkit.train.methods.lipschitz import GroupSort, LinfLinear, LipschitzHead, lipschitz_bound, operator_norm


def test_the_constraint_holds_after_aggressive_training():
    torch.manual_seed(0)
    layer = LinfLinear(64, 10, k=1.0)
    opt = torch.optim.Adam(layer.parameters(), lr=1.0)
    z, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(z) * 50, y).backward()
        opt.step()
    assert layer.weight.abs().sum(1).max() <= 1.0 + 1e-6


def test_the_sign_of_the_heaviest_row_attains_the_operator_norm_and_l2_rows_exceed_k():
    torch.manual_seed(1)
    for row_norm in ("l1", "l2"):
        layer = LinfLinear(100, 5, k=1.0, row_norm=row_norm)
        with torch.no_grad():
            layer.g.fill_(1.0)
        w = layer.weight.detach()
        j = w.abs().sum(1).argmax()
        delta = w[j].sign()                                   # ||delta||_inf = 1
        attained = (w @ delta).abs().max()
        assert attained == pytest.approx(float(w[j].abs().sum()), rel=1e-6)
        assert operator_norm(layer) == pytest.approx(float(attained), rel=1e-6)
        if row_norm == "l1":
            assert attained <= 1.0 + 1e-6
        else:                                                 # App. A.1's literal variant: up to sqrt(n)
            assert attained > 2.0


def test_groupsort_sorts_each_group_keeps_its_multiset_and_is_1_lipschitz():
    torch.manual_seed(2)
    gs = GroupSort(2)
    z = torch.randn(1000, 8)
    out = gs(z)
    pairs, sorted_pairs = z.view(1000, 4, 2), out.view(1000, 4, 2)
    assert torch.equal(sorted_pairs, pairs.sort(-1).values)
    assert (sorted_pairs[..., 0] <= sorted_pairs[..., 1]).all()
    a, b = torch.randn(10_000, 8), torch.randn(10_000, 8)
    assert ((gs(a) - gs(b)).abs().amax(1) <= (a - b).abs().amax(1) + 1e-6).all()


@pytest.mark.parametrize("trained", [False, True])
def test_a_four_layer_head_moves_its_logits_by_at_most_its_bound(trained):
    torch.manual_seed(3)
    for constraint in ("wn", "none"):
        head = LipschitzHead(16, 5, layers=4, constraint=constraint)
        if trained:
            opt = torch.optim.Adam(head.parameters(), lr=0.05)
            z, y = torch.randn(512, 16), torch.randint(0, 5, (512,))
            for _ in range(100):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(head(z), y).backward()
                opt.step()
        bound = lipschitz_bound(head)
        if constraint == "wn":
            assert bound <= 1.0 + 1e-6
        a = torch.randn(10_000, 16)
        b = a + 0.3 * torch.randn(10_000, 16)
        with torch.no_grad():
            moved = (head(a) - head(b)).abs().amax(1)
        assert (moved <= bound * (a - b).abs().amax(1) * (1 + 1e-5) + 1e-6).all()


def test_none_and_wn_are_the_same_net():
    wn, none = LipschitzHead(16, 5, layers=4, constraint="wn"), LipschitzHead(16, 5, layers=4, constraint="none")
    shapes = lambda h: [tuple(m.weight.shape) for m in h.linears]   # noqa: E731
    assert shapes(wn) == shapes(none) == [(16, 16), (16, 16), (16, 16), (5, 16)]
    assert [type(m).__name__ for m in wn.net][1::2] == ["GroupSort"] * 3
    assert all(m.bias is not None and m.bias.shape == (m.weight.shape[0],) for m in wn.linears + none.linears)
    bare = LipschitzHead(16, 5, layers=4, constraint="wn", bias=False)
    assert all(m.bias is None for m in bare.linears)


def test_a_bias_leaves_the_lipschitz_bound_and_its_guarantee():
    """Eqs. 3-4's b: the bound is the weights' alone, and ||h(a) - h(b)||_inf <= L ||a - b||_inf holds with it."""
    torch.manual_seed(0)
    head = LipschitzHead(16, 5, layers=4, constraint="wn")
    with torch.no_grad():
        for m in head.linears:
            m.bias.normal_(0, 3.0)
    bound = lipschitz_bound(head)
    assert bound <= 1.0 + 1e-5
    a, b = torch.randn(256, 16), torch.randn(256, 16)
    with torch.no_grad():
        moved = (head(a) - head(b)).abs().amax(1)
    assert (moved <= bound * (a - b).abs().amax(1) * (1 + 1e-5) + 1e-6).all()
    assert (moved > 0).any()


@pytest.mark.parametrize("kw", [dict(constraint="spectral"), dict(layers=0), dict(layers=4, hidden=15, group=2),
                                dict(k=0.0), dict(k=-1.0), dict(row_norm="l3")])
def test_bad_heads_are_config_errors(kw):
    with pytest.raises(ConfigError):
        LipschitzHead(16, 5, **kw)
