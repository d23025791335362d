"""Sources from checkpoint files a researcher already has (runs.ExternalSource): each format,
written from a model here, loads to the same logits; the file's sha256 keys the cache; a transfer
from one keeps its frozen extractor bit-identical; every bad file is one ConfigError naming it,
with nothing written."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torchvision

from rtlkit import ConfigError
from rtlkit.core.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNetSpec
from rtlkit.core.models.wrn import WRNSpec
from rtlkit.runs.specs import DataSpec, ExternalSource, TransferRun
from rtlkit.runs.cache import get_or_train
from rtlkit.runs.store import run_dir
from rtlkit.core.runtime import Runtime
from rtlkit.train.loop import StandardTraining
from rtlkit.train.transfer import TransferPolicy

CPU = Runtime("cpu")


def _tv_resnet18(classes=10, seed=0):
    torch.manual_seed(seed)
    tv = torchvision.models.resnet18(num_classes=classes).eval()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return tv


def _normalised(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_a_torchvision_state_dict_loads_to_torchvisions_logits(tmp_path, runs_root):
    tv = _tv_resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    src = ExternalSource(ResNetSpec(18), str(tmp_path / "r18.pth"), "torchvision", size=32)
    model = get_or_train(src, CPU, progress=False)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tv(_normalised(x, IMAGENET_MEAN, IMAGENET_STD)))
    # cached: the converted weights, sha-checked, in the run's folder; the same on a reload
    folder = run_dir(src)
    assert (folder / "model.pt").is_file()
    with torch.no_grad():
        assert torch.equal(get_or_train(src, CPU, progress=False)(x), model(x))


def test_a_robustness_checkpoint_loads_with_its_own_normalisation(tmp_path):
    """MadryLab robustness: {'model': {'module.model.*', 'module.attacker.model.*',
    'module.normalizer.new_mean', ...}, 'epoch': ...}; its normaliser's mean / std go inside."""
    tv = _tv_resnet18(classes=5)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    sd = tv.state_dict()
    state = {**{f"module.model.{k}": v for k, v in sd.items()}, **{f"module.attacker.model.{k}": v for k, v in sd.items()},
             "module.normalizer.new_mean": torch.tensor(mean).view(3, 1, 1),
             "module.normalizer.new_std": torch.tensor(std).view(3, 1, 1),
             "module.attacker.normalize.new_mean": torch.tensor(mean).view(3, 1, 1),
             "module.attacker.normalize.new_std": torch.tensor(std).view(3, 1, 1)}
    torch.save({"model": state, "epoch": 90}, tmp_path / "robust.ckpt")
    model = ExternalSource(ResNetSpec(18), str(tmp_path / "robust.ckpt"), "robustness", size=32).build_model().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tv(_normalised(x, mean, std)))


class _RBBlock(nn.Module):
    """RobustBench's / TRADES' WideResNet block, as its model zoo defines it."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equal else x)))
        return torch.add(x if self.equal else self.convShortcut(x), self.conv2(out))


class _RBWideResNet(nn.Module):
    def __init__(self, depth=16, width=2, classes=10):
        super().__init__()
        n, c = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)

        class Group(nn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.layer = nn.Sequential(*[_RBBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                             for i in range(n)])

            def forward(self, x):
                return self.layer(x)
        self.block1, self.block2, self.block3 = Group(c[0], c[1], 1), Group(c[1], c[2], 2), Group(c[2], c[3], 2)
        self.sub_block1 = Group(c[0], c[1], 1)   # in TRADES' file, unused in forward
        self.bn1, self.relu = nn.BatchNorm2d(c[3]), nn.ReLU()
        self.fc = nn.Linear(c[3], classes)

    def forward(self, x):
        out = self.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def test_a_robustbench_wideresnet_loads_to_its_logits(tmp_path):
    torch.manual_seed(0)
    rb = _RBWideResNet().eval()
    with torch.no_grad():
        for m in rb.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in rb.state_dict().items()}}, tmp_path / "rb.pt")
    model = ExternalSource(WRNSpec(16, 2), str(tmp_path / "rb.pt"), "robustbench", size=32).build_model().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), rb(x), atol=1e-6, rtol=0)   # (x - 0) / 1 inside: the same sums


def test_the_files_sha256_keys_the_cache(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_tv_resnet18(seed=0).state_dict(), path)
    a = ExternalSource(ResNetSpec(18), str(path), size=32)
    torch.save(_tv_resnet18(seed=1).state_dict(), path)
    b = ExternalSource(ResNetSpec(18), str(path), size=32)
    assert a.sha256 != b.sha256 and run_dir(a) != run_dir(b)
    with pytest.raises(ConfigError, match="has changed"):   # a config read back names the old file's sha
        dataclasses.replace(b, sha256=a.sha256)


def test_a_transfer_from_a_checkpoint_keeps_its_frozen_extractor(tmp_path):
    torch.save(_tv_resnet18().state_dict(), tmp_path / "r18.pth")
    src = ExternalSource(ResNetSpec(18), str(tmp_path / "r18.pth"), size=16)
    target = DataSpec("synthetic-b", train_n=64, test_n=30)
    run = TransferRun(src, target, TransferPolicy(k=3), StandardTraining(epochs=1, lr=0.05, batch_size=32))
    s0, s1 = get_or_train(src, CPU, progress=False).state_dict(), get_or_train(run, CPU, progress=False).state_dict()
    frozen = [k for k in s0 if k.startswith("blocks.") and int(k.split(".")[1]) < 9 - 3]
    assert frozen and all(torch.equal(s0[k], s1[k]) for k in frozen)
    assert not torch.equal(s0["blocks.7.conv1.weight"], s1["blocks.7.conv1.weight"])


def test_bad_checkpoints_are_one_error_naming_the_file(tmp_path, runs_root):
    with pytest.raises(ConfigError, match="no such file"):
        ExternalSource(ResNetSpec(18), str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="junk.pth.*cannot be read"):
        get_or_train(ExternalSource(ResNetSpec(18), str(tmp_path / "junk.pth")), CPU, progress=False)
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match=r"r34.pth does not fit resnet-18: unexpected \['layer1.2.conv1.weight'"):
        get_or_train(ExternalSource(ResNetSpec(18), str(tmp_path / "r34.pth")), CPU, progress=False)
    with pytest.raises(ConfigError, match="robustbench format holds a WideResNet"):
        ExternalSource(ResNetSpec(18), str(tmp_path / "r34.pth"), "robustbench").build_model()
    with pytest.raises(ConfigError, match="checkpoint format"):
        ExternalSource(ResNetSpec(18), str(tmp_path / "r34.pth"), "onnx")
    assert not runs_root.exists() or not any(runs_root.glob("source-*"))   # nothing half-written
