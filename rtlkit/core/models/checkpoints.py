"""Checkpoint files into rtlkit's partition: torchvision, MadryLab robustness, RobustBench /
TRADES and rtlkit state dicts; every problem a ConfigError naming the file and the first
mismatched keys."""
from __future__ import annotations

import math

import torch

from rtlkit.core.errors import ConfigError, check
from rtlkit.core.models.backbone import Backbone
from rtlkit.core.models.resnet import ResNetSpec
from rtlkit.core.models.wrn import WRNSpec


def torchvision_key_map(spec: ResNetSpec) -> dict[str, str]:
    """torchvision ResNet parameter-name prefixes -> ours (``conv1.`` -> ``blocks.0.0.conv1.``,
    ``layer2.0.`` -> ``blocks.<i>.``, ``fc.`` -> ``blocks.<last>.fc.``)."""
    out = {"conv1.": "blocks.0.0.conv1.", "bn1.": "blocks.0.0.bn1."}
    i = 0
    for g, n in enumerate(spec.layers):
        for j in range(n):
            out[f"layer{g + 1}.{j}."] = "blocks.0.1." if i == 0 else f"blocks.{i}."
            i += 1
    out["fc."] = f"blocks.{i}.fc."
    return out


def from_torchvision_keys(state: dict, spec: ResNetSpec) -> dict:
    """A torchvision-named ResNet state dict renamed to :class:`ResNet`'s; a key under no known
    prefix is kept as it is (load_state_dict then names it)."""
    return _renamed(state, torchvision_key_map(spec))


# --------------------------------------------------------------------------- checkpoints from elsewhere

CHECKPOINT_FORMATS = ("torchvision", "robustness", "robustbench", "rtlkit")


def robustbench_key_map(spec: WRNSpec) -> dict[str, str]:
    """RobustBench's / TRADES' WideResNet names -> ours: ``conv1.`` (the stem), ``block<g>.layer.<j>.``
    (``convShortcut.`` is our ``shortcut.``), the final ``bn1.`` and ``fc.``. The same pre-activation
    block, so the same function (``sub_block1``, unused in its forward, is dropped)."""
    n = (spec.depth - 4) // 6
    out = {"conv1.": "blocks.0.0.conv."}
    for g in range(3):
        for j in range(n):
            i = g * n + j
            out[f"block{g + 1}.layer.{j}."] = "blocks.0.1." if i == 0 else f"blocks.{i}."
    out["bn1."] = f"blocks.{3 * n}.bn."
    out["fc."] = f"blocks.{3 * n + 1}.fc."
    return out


def _renamed(state: dict, mapping: dict[str, str], drop: tuple[str, ...] = ()) -> dict:
    prefixes = sorted(mapping.items(), key=lambda kv: -len(kv[0]))
    out = {}
    for k, v in state.items():
        if k.startswith(drop):
            continue
        for a, b in prefixes:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k.replace(".convShortcut.", ".shortcut.")] = v
    return out


def read_checkpoint(path, spec: WRNSpec | ResNetSpec, fmt: str, allow_pickle: bool = False) -> tuple[dict, tuple | None, tuple | None]:
    """(state dict in rtlkit's names without the normalisation, mean, std) from a checkpoint file:
    a torchvision ResNet ``state_dict`` ("torchvision"); a MadryLab ``robustness`` checkpoint (its
    ``model`` or ``state_dict`` entry, the ``module.model.`` weights; the attacker's copy is
    dropped, the normalizer's mean / std returned); a RobustBench / TRADES WideResNet state dict
    ("robustbench"); or an rtlkit ``model.pt`` ("rtlkit"). mean / std are None where the file
    does not record them. Every problem is a ConfigError naming the file."""
    from pathlib import Path

    path = Path(path)
    check(fmt in CHECKPOINT_FORMATS, f"checkpoint format {fmt!r}: one of {', '.join(CHECKPOINT_FORMATS)}")
    check(path.is_file(), f"checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:   # noqa: BLE001 - a torn, foreign or pickled file: one clear line
        hint = " (it pickles Python objects: load it with allow_pickle=True only if you trust it)" \
            if "weights_only" in str(e) or "Unpickl" in type(e).__name__ else ""
        first = (str(e).splitlines() or ["an empty file" if path.stat().st_size == 0 else "no message"])[0]
        raise ConfigError(f"checkpoint {path}: cannot be read as a torch file ({type(e).__name__}: "
                          f"{first[:200]}){hint}") from e
    check(isinstance(obj, dict), f"checkpoint {path}: holds a {type(obj).__name__}, not a state dict")
    mean = std = None
    if fmt == "robustness":
        inner = obj.get("model", obj.get("state_dict", obj))
        check(isinstance(inner, dict), f"checkpoint {path}: its 'model' entry is not a state dict")
        for name in ("module.normalizer.new_mean", "normalizer.new_mean"):
            if name in inner or name.replace("mean", "std") in inner:
                mean, std = _normaliser(inner, name, name.replace("mean", "std"), path)
        prefix = next((p for p in ("module.model.", "model.") if any(k.startswith(p) for k in inner)), None)
        check(prefix is not None, f"checkpoint {path}: no 'module.model.' weights (not a robustness checkpoint?); "
              f"first keys: {list(inner)[:5]}")
        obj = {k[len(prefix):]: v for k, v in inner.items() if k.startswith(prefix)}
    elif isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    obj = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}   # DataParallel's prefix
    check(all(isinstance(v, torch.Tensor) for v in obj.values()), f"checkpoint {path}: not a state dict of tensors")
    if fmt in ("torchvision", "robustness"):
        check(isinstance(spec, ResNetSpec), f"checkpoint {path}: the {fmt} format holds a ResNet, not a {spec.name}")
        state = from_torchvision_keys(obj, spec)
    elif fmt == "robustbench":
        check(isinstance(spec, WRNSpec), f"checkpoint {path}: the robustbench format holds a WideResNet, not a {spec.name}")
        for name in ("mu", "sigma"):   # some RobustBench models carry their normalisation as buffers
            obj.pop(name, None)
        state = _renamed(obj, robustbench_key_map(spec), drop=("sub_block1.",))
    else:
        state = obj
        if "normalize.mean" in state or "normalize.std" in state:
            mean, std = _normaliser(state, "normalize.mean", "normalize.std", path)
    state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    check(not bad, f"checkpoint {path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[:4]}: "
          "a model with them would evaluate to a meaningless accuracy")
    return state, mean, std


def _normaliser(state: dict, mean_key: str, std_key: str, path) -> tuple[tuple, tuple]:
    """A checkpoint's input normalisation: both of mean and std, finite, std > 0, one value per channel."""
    check(mean_key in state and std_key in state, f"checkpoint {path}: it has {mean_key if mean_key in state else std_key} "
          f"but no {std_key if mean_key in state else mean_key}: a normalisation needs both")
    mean, std = (tuple(float(v) for v in state[k].flatten()) for k in (mean_key, std_key))
    check(len(mean) == len(std) >= 1 and all(math.isfinite(v) for v in mean + std) and all(v > 0 for v in std),
          f"checkpoint {path}: its normalisation mean {mean} / std {std} must be finite, of one length, std > 0")
    return mean, std


def load_weights(model: Backbone, state: dict, path) -> None:
    """``state`` (rtlkit's names, no normalisation) into ``model``; keys or shapes that do not
    match the architecture are one ConfigError naming the file and the first mismatched keys."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    check(not (missing or unexpected or shapes),
          f"checkpoint {path} does not fit {model.spec.name}: " + "; ".join(
              f"{what} {items[:4]}" + (f" and {len(items) - 4} more" if len(items) > 4 else "")
              for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
