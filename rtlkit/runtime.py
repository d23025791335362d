"""Where and how the maths runs: device, bf16 autocast, channels_last, torch.compile.

The fast path is on by default on CUDA and switches itself off on the CPU (CI has no GPU).
Each switch can be set by the user, e.g. ``Runtime(compile=False)``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import check


def default_device() -> str:
    env = os.environ.get("RTLKIT_DEVICE")
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Runtime:
    device: str | None = None
    amp: bool | None = None            # bf16 autocast (CUDA default on)
    channels_last: bool | None = None  # NHWC memory format (CUDA default on)
    compile: bool | None = None        # torch.compile the model (CUDA default on)

    def __post_init__(self):
        self.device = self.device or default_device()
        check(self.device.split(":")[0] in ("cpu", "cuda", "mps"), f"unknown device {self.device!r}")
        if self.device.startswith("cuda"):
            check(torch.cuda.is_available(), "device 'cuda' was asked for but torch sees no GPU")
        cuda = self.device.startswith("cuda")
        self.amp = cuda if self.amp is None else self.amp
        self.channels_last = cuda if self.channels_last is None else self.channels_last
        self.compile = cuda if self.compile is None else self.compile

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def compiled(self, model: torch.nn.Module):
        """The callable to run the model with: compiled once per model object when enabled."""
        if not self.compile:
            return model
        fn = getattr(model, "_rtlkit_compiled", None)
        if fn is None:
            fn = torch.compile(model, dynamic=False)
            object.__setattr__(model, "_rtlkit_compiled", fn)
        return fn

    def describe(self) -> str:
        if self.is_cuda:
            name = torch.cuda.get_device_name(torch.device(self.device))
        else:
            name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        flags = [f for f, on in (("bf16", self.amp), ("channels_last", self.channels_last),
                                 ("compile", self.compile)) if on]
        return f"{name}" + (f" [{', '.join(flags)}]" if flags else " [fp32 eager]")


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
