"""The closed-form representation search against brute force: z' is misclassified, at distance
min_j delta_j / ||w_j||_2, and no misclassified random point is closer."""
import torch

from rtlkit.train.methods.search import representation_search


def test_the_nearest_misclassified_representation_in_closed_form():
    g = torch.Generator().manual_seed(0)
    d, c = 8, 4
    w, b = torch.randn(c, d, generator=g, dtype=torch.float64), torch.randn(c, generator=g, dtype=torch.float64)
    z = torch.randn(64, d, generator=g, dtype=torch.float64)
    y = (z @ w.T + b).argmax(1)                              # every point correctly classified
    out = representation_search(w, b, z, y)
    logits = out["z"] @ w.T + b
    assert (logits.argmax(1) != y).all()                     # misclassified
    assert torch.allclose((out["z"] - z).norm(dim=1), out["distance"], rtol=1e-5)
    for i in range(len(z)):                                  # the hyperplane distances, by hand
        wd = w[y[i]] - w
        dist = ((wd @ z[i]) + b[y[i]] - b) / wd.norm(dim=1)
        dist[y[i]] = float("inf")
        assert torch.isclose(out["distance"][i], dist.min())
    # no misclassified point of a dense random cloud around z is closer
    for i in range(8):
        r = out["distance"][i]
        pts = z[i] + torch.randn(20_000, d, generator=g, dtype=torch.float64) * r * 0.7
        wrong = (pts @ w.T + b).argmax(1) != y[i]
        if wrong.any():
            assert (pts[wrong] - z[i]).norm(dim=1).min() >= r * (1 - 1e-9)


def test_an_already_misclassified_point_stays_put():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z, y = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    out = representation_search(w, None, z, y)
    assert torch.equal(out["z"], z) and out["distance"].item() == 0.0


def test_input_search_reaches_a_representation_when_f_can_and_keeps_the_first_success():
    from rtlkit.train.methods.search import InputSearch, input_search
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 6, generator=g)
    x = torch.rand(32, 6, generator=g) * 0.6 + 0.2
    y = (x @ w.T).argmax(1)
    target = representation_search(w, None, x, y)["z"]
    target = x + 1.5 * (target - x)                                   # a little past the boundary
    inside = ((target >= 0) & (target <= 1)).all(1)
    out = input_search(lambda v: v, lambda z: z @ w.T, x, y, target, InputSearch(steps=300))
    assert out["success"][inside].all()                               # f = identity: every reachable z' is reached
    assert ((out["x"] @ w.T).argmax(1)[out["success"]] != y[out["success"]]).all()
    assert ((out["x"] >= 0) & (out["x"] <= 1)).all()
    assert (out["step"][out["success"]] >= 1).all() and (out["step"][~out["success"]] == -1).all()
    none = input_search(lambda v: v, lambda z: z @ w.T, x, y, x, InputSearch(steps=5))   # target = x: no reason to move
    assert not none["success"].any()


def test_bad_input_search_settings_are_config_errors():
    import pytest
    from rtlkit import ConfigError
    from rtlkit.train.methods.search import InputSearch
    for kw in (dict(steps=0), dict(lr=0), dict(weight=-1)):
        with pytest.raises(ConfigError):
            InputSearch(**kw)
