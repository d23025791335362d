"""The closed-form representation search against brute force: z' is misclassified, at distance
min_j delta_j / ||w_j||_2, and no misclassified random point is closer."""
import torch

from rtlkit.methods.search import representation_search


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
