"""Provably Robust Transfer Sec. 4's "noise" mode: N(0, I) clipped to L2 <= eps."""
import torch

from rtlkit.train.methods.consistency import ClippedNoiseTraining, clipped_noise


def test_clipped_noise_is_never_longer_than_eps():
    torch.manual_seed(0)
    for shape, eps in (((512, 1, 28, 28), 0.1), ((512, 3, 32, 32), 0.5), ((4096, 1, 1, 2), 1.0), ((64, 1, 1, 1), 3.0)):
        x = torch.rand(shape)
        e = clipped_noise(x, eps)
        norms = e.flatten(1).norm(dim=1)
        assert e.shape == x.shape and e.dtype == x.dtype
        assert (norms <= eps * (1 + 1e-6)).all()
        # where N(0, I) is longer than eps (784 pixels: always) it is scaled to exactly eps; where it is
        # shorter (1 or 2 pixels at eps >= 1), it is left as drawn
        torch.manual_seed(1)
        raw = torch.randn_like(x).flatten(1).norm(dim=1)
        torch.manual_seed(1)
        again = clipped_noise(x, eps).flatten(1).norm(dim=1)
        assert torch.allclose(again, torch.minimum(raw, torch.tensor(eps)), rtol=1e-5)
        torch.manual_seed(0)


def test_clipped_noise_training_is_one_cross_entropy_on_noisy_inputs():
    from rtlkit.core.models.wrn import WRNSpec
    from rtlkit.core.models import build
    from rtlkit.core.runtime import Runtime
    rt = Runtime(device="cpu")
    model = build(WRNSpec(depth=10, width=1), 3, 1, (0.5,), (0.25,)).eval()
    m = ClippedNoiseTraining(epochs=1, eps=0.1)
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 3, (8,))
    torch.manual_seed(0)
    loss, logits = m.batch_loss(model, model, x, y, rt)
    torch.manual_seed(0)
    want = torch.nn.functional.cross_entropy(model(x + clipped_noise(x, 0.1)), y)
    assert torch.allclose(loss, want) and logits.shape == (8, 3)
