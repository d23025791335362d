"""Backbones with the input normalisation inside the model (so epsilon and sigma are in [0, 1]
pixel units) and an explicit, ordered block partition for "fine-tune the last k blocks".

:class:`Backbone` is the protocol every method uses (last-k fine-tuning, the BN policies, FDM, NEFT,
LwF, probes, heads, attacks, certification, the report card): ``normalize``; ``blocks``, in forward
order, the last one a :class:`Head` (``head.fc`` replaceable, ``head.features`` the pooled
penultimate feature); ``features(x, n)`` (the first n blocks) and ``forward_from(h, n)``;
``penultimate``; ``feature_dim``. Residual blocks that NEFT can make non-expansive carry a
``convex_sum`` flag. Two implementations: rtlkit's pre-activation :class:`WideResNet`
(:class:`WRNSpec`) and torchvision's ResNet-18/34/50 (:class:`ResNetSpec`, same parameter names
per block, so torchvision's and the robustness ecosystem's weights load).

The package: ``backbone`` (the protocol, the head), ``wrn``, ``resnet``, ``checkpoints`` (the
file formats); here, a backbone by name (:func:`parse_spec`) and built (:func:`build`)."""
from __future__ import annotations



from rtlkit.core.errors import check
from rtlkit.core.models.backbone import Backbone
from rtlkit.core.models.resnet import ResNet, ResNetSpec
from rtlkit.core.models.wrn import WRNSpec, WideResNet




def parse_spec(value) -> WRNSpec | ResNetSpec:
    """A backbone by name, as a notebook parameter gives it: ``wrn-16-1`` (``-s2``: early
    downsampling), ``resnet18`` / ``resnet-50`` (``-w8``: first-stage width 8, ``-small``: the
    CIFAR stem); a spec passes through. Anything else is a ConfigError naming the forms."""
    import re
    if isinstance(value, (WRNSpec, ResNetSpec)):
        return value
    forms = "wrn-<depth>-<width>[-s2] or resnet<18|34|50>[-w<width>][-small]"
    check(isinstance(value, str), f"model: a backbone name ({forms}), not {value!r}")
    v = value.strip().lower()
    m = re.fullmatch(r"wrn-(\d+)-(\d+)(-s2)?", v)
    if m:
        return WRNSpec(int(m[1]), int(m[2]), stem_stride=2 if m[3] else 1)
    m = re.fullmatch(r"resnet-?(\d+)(?:-w(\d+))?(-small)?", v)
    check(m is not None, f"unknown model {value!r}: {forms}")
    return ResNetSpec(int(m[1]), int(m[2] or 64), bool(m[3]))


def build(spec: WRNSpec | ResNetSpec, num_classes: int, in_channels: int, mean, std) -> Backbone:
    """The backbone ``spec`` names, for ``num_classes`` classes, normalising its input by mean / std."""
    check(isinstance(spec, (WRNSpec, ResNetSpec)), f"model: a WRNSpec or a ResNetSpec, not {type(spec).__name__}")
    cls = ResNet if isinstance(spec, ResNetSpec) else WideResNet
    return cls(spec, num_classes, in_channels, mean, std)
