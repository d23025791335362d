"""Where and how the maths runs: device, bf16 autocast, channels_last, torch.compile.

The fast path is on by default on CUDA and switches itself off on the CPU (CI has no GPU).
Each switch can be set by the user, e.g. ``Runtime(compile=False)``.

torch.compile works block by block: each entry of ``model.blocks`` is compiled in place. A
transfer sweep changes which blocks train, which BN layers update statistics and which weights
need gradients; compiled whole, the model would get a new graph for every k and BN mode (and
fall back to eager after torch's recompile limit). Compiled per block, each block shape has a
handful of variants (attack: eval, input gradient; frozen: no gradient, eval or train BN;
fine-tuned: train), all met in the first run or two of a sweep and reused by every later run,
whatever its k, BN mode or seed. The price is a graph break between blocks: 7-29 % on the tiny
quick model on the CPU (BENCHMARKS.md); ``compile_scope="model"`` compiles one graph instead.
Batch sizes are bucketed (:class:`BucketedCall`): a compiled unit in eval mode runs at the next
power of two from 16, so survivor subsets, tails and last batches add no graphs.

Under autocast the head's logits and NEFT's spectral norm stay in float32 (``models.Head``,
``methods.neft``); :func:`strict_fp32` makes a float32 baseline float32 on a GPU (no TF32).
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from rtlkit.core.errors import check

# Variants per block code object: ~10 modes x ~5 block shapes, plus NEFT-parametrised blocks.
RECOMPILE_LIMIT = 128


# --------------------------------------------------------------------------- pinned CPU instruction set
# CPU bits depend on the kernels the libraries pick for the host's instruction set: ATen's vectorised
# ops (ATEN_CPU_CAPABILITY), oneDNN's convolutions (ONEDNN_MAX_CPU_ISA) and MKL's BLAS (MKL_CBWR,
# conditional numerical reproducibility). Each of the three alone changes a smoke training's weights
# on an AVX-512 host; pinned together to AVX2, an AVX-512 host gives the bits of an AVX2-only one
# (tests/core/test_cpu_isa.py). Threads change the bits too: manifests record them.
CPU_ISA_ENV = "RTLKIT_CPU_ISA"
# "portable" goes further, for bits that do not depend on the CPU's vendor either (oneDNN blocks its
# convolutions by the host's cache sizes, and MKL's AVX2 branch differs between vendors): ATen at its
# scalar default level, oneDNN (and NNPACK) off so convolutions run ATen's own im2col + MKL GEMM, and
# MKL in its COMPATIBLE mode, the one code path it promises on every x86 CPU.
# "avx2-compat" keeps "avx2"'s ATen and oneDNN and takes MKL's COMPATIBLE path: the vendor branch is MKL's
# alone (emulated CPUs, BENCHMARKS.md), so it gives one set of bits on Intel and AMD at about avx2's speed.
CPU_ISA_PINS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
                "avx2-compat": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"},
                "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}}
CPU_ISA_MODES = ("native",) + tuple(CPU_ISA_PINS)
# every library variable that changes CPU bits (the pins' and MKL's instruction cap): recorded in each run's
# `cpu` entry, and cleared by whatever starts a child that must choose its own mode (bench/cpu_isa, bench/reproduce)
CPU_LIB_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")
_NO_ONEDNN = ("portable",)   # modes that switch oneDNN and NNPACK off in-process (no variable does it)


def cpu_isa_mode(mode: str | None = None) -> str:
    """A CPU instruction-set mode checked: ``mode``, else ``$RTLKIT_CPU_ISA`` ("native": whatever
    the host has, the libraries' default; "avx2": pinned), "native" when unset."""
    mode = (mode or os.environ.get(CPU_ISA_ENV) or "native").strip().lower()
    check(mode in CPU_ISA_MODES, f"{CPU_ISA_ENV} must be one of {', '.join(CPU_ISA_MODES)}, not {mode!r}")
    return mode


def pin_cpu_isa(mode: str | None = None) -> str:
    """Apply a CPU instruction-set mode to this process and to every process it starts (the
    variables go into os.environ; the libraries read them at their first CPU kernel, so call this
    before any tensor maths, as the CLIs and ``report.start`` do). Returns the mode. A pin the
    host cannot honour (no AVX2) is a ConfigError naming what it has."""
    mode = cpu_isa_mode(mode)
    os.environ[CPU_ISA_ENV] = mode
    if mode == "native":
        _set_onednn(True)
        return mode
    flags = cpu_flags()
    check(mode == "portable" or not flags or "avx2" in flags, f"{CPU_ISA_ENV}={mode}: this CPU has no AVX2 "
          f"({cpu_model()}); use {CPU_ISA_ENV}=portable or native (its bits are then this CPU's own)")
    os.environ.update(CPU_ISA_PINS[mode])
    _set_onednn(mode not in _NO_ONEDNN)
    return mode


def _set_onednn(enabled: bool) -> None:
    """oneDNN (mkldnn) and NNPACK on or off for this process's CPU convolutions. Every rtlkit process
    applies its mode through ``pin_cpu_isa``, so the processes it starts (notebook kernels, workers)
    switch them off again themselves."""
    torch.backends.mkldnn.enabled = enabled
    torch.backends.nnpack.set_flags(enabled)


# the committed figures' profile: pinned to "avx2-compat", whose CSVs are the same bits on Intel and AMD hosts
# alike ("avx2" alone is not: AMD EPYC Zen 3 against Intel Xeon measured different, docs/reliability.md)
PINNED_PROFILES = ("quick",)


def default_cpu_isa(profile: str, device: str | None = None) -> str:
    """The mode a command runs ``profile`` in: ``$RTLKIT_CPU_ISA`` when set; else "avx2-compat" for
    the committed figures' profile on the CPU (so a fresh clone reproduces them on an Intel or an AMD
    host), "native" otherwise."""
    if (os.environ.get(CPU_ISA_ENV) or "").strip():
        return cpu_isa_mode()
    if profile in PINNED_PROFILES and not (device or default_device()).startswith("cuda"):
        return "avx2-compat" if "avx2" in cpu_flags() else "native"
    return "native"


def cpu_isa_pinned() -> str | None:
    """The pin in force in this process ("avx2"), or None: the mode asked for, every variable it
    sets still set, and ATen's dispatch really at that level (it is fixed at the first CPU kernel)."""
    mode = os.environ.get(CPU_ISA_ENV, "native").strip().lower()
    pins = CPU_ISA_PINS.get(mode)
    if not pins or any(os.environ.get(k) != v for k, v in pins.items()):
        return None
    if mode in _NO_ONEDNN and torch.backends.mkldnn.enabled:
        return None
    return mode if torch.backends.cpu.get_cpu_capability().lower() == pins["ATEN_CPU_CAPABILITY"] else None


def pin_cpu_isa_if_possible(mode: str) -> str:
    """:func:`pin_cpu_isa` inside a process that may already have run CPU maths (a notebook kernel):
    the pin is kept only if ATen's dispatch really takes it; otherwise the variables are put back
    as they were (no library half-pinned: the bits would be neither mode's) with a warning, and
    "native" is returned. What ``report.start`` calls, so that a notebook opened in JupyterLab
    uses the cache keys ``make figures`` made."""
    keys = (CPU_ISA_ENV, *{k for pins in CPU_ISA_PINS.values() for k in pins})
    before = {k: os.environ.get(k) for k in keys}
    mode = pin_cpu_isa(mode)
    if mode == "native" or cpu_isa_pinned() == mode:
        return mode
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _set_onednn(True)
    import warnings
    warnings.warn(f"rtlkit: the CPU instruction set could not be pinned to {mode} here (CPU maths ran before "
                  f"report.start: ATen is at {torch.backends.cpu.get_cpu_capability()}); results are this CPU's own "
                  f"and have their own cache keys. Restart the kernel, or set {CPU_ISA_ENV}={mode} before starting it",
                  stacklevel=3)
    return "native"


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """The host's CPU model and vector-ISA flags, read once from /proc/cpuinfo."""
    model, flags = "", ()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = tuple(sorted(x for x in line.split(":", 1)[1].split()
                                         if x.startswith(("avx", "amx", "fma", "sse4"))))
    except OSError:
        pass
    if not model:
        import platform
        model = platform.processor() or platform.machine()
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The host's vector-ISA flags (AVX, AVX2, FMA, AVX-512*, AMX*) from /proc/cpuinfo; [] where unknown."""
    return list(_cpuinfo()[1])


def cpu_record() -> dict:
    """What CPU bits depend on, for every manifest and run record: ATen's dispatch level, the
    host's CPU and vector flags, the pin in force and the library variables as set."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(), "cpu_isa_pinned": cpu_isa_pinned(), "onednn": bool(torch.backends.mkldnn.enabled),
            "cpu_isa_env": {k: os.environ.get(k) for k in CPU_LIB_VARS}}


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
    compile: bool | None = None        # torch.compile each block of the model (CUDA default on)
    compile_backend: str = "inductor"  # "aot_eager" traces without code generation (tests, debugging)
    compile_scope: str = "blocks"      # "blocks": each of model.blocks (sweeps); "model": the whole
                                       # model in one graph (one long run; recompiles per k / BN mode)
    compile_mode: str | None = None    # torch.compile mode, e.g. "max-autotune-no-cudagraphs" (None: default)

    def __post_init__(self):
        cpu_isa_mode()   # a bad RTLKIT_CPU_ISA is an error from Python too, not a silent "native"
        self.device = self.device or default_device()
        check(self.device.split(":")[0] in ("cpu", "cuda", "mps"), f"unknown device {self.device!r}")
        if self.device.startswith("cuda"):
            check(torch.cuda.is_available(), "device 'cuda' was asked for but torch sees no GPU")
        check(self.compile_scope in ("blocks", "model"),
              f"compile_scope must be 'blocks' or 'model', not {self.compile_scope!r}")
        cuda = self.device.startswith("cuda")
        self.amp = cuda if self.amp is None else self.amp
        self.channels_last = cuda if self.channels_last is None else self.channels_last
        self.compile = cuda if self.compile is None else self.compile
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (channels_last if set) and compile its blocks in place if set."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return self.compiled(model)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def compiled(self, model: nn.Module) -> nn.Module:
        """The callable to run the model with: the model itself, its blocks compiled in place when
        enabled (so ``model.features`` and ``forward_from`` run compiled too)."""
        if self.compile:
            compile_blocks(model, self.compile_backend, self.compile_scope, self.compile_mode)
        return model

    def numerics(self) -> dict | None:
        """What a result's bits depend on beyond its config: device type, autocast dtype, memory
        format and compilation. None for the CPU's fp32 eager default, whose cache keys are the
        config's alone; anything else is part of every cache key (``rtlkit.runs.store.run_dir``)."""
        dev = self.device.split(":")[0]
        if dev == "cpu" and not (self.amp or self.channels_last or self.compile):
            pin = cpu_isa_pinned()   # pinned CPU bits are another result than the host's own, and their
            # reduction order is the thread count's: a pinned result is keyed by both
            return None if pin is None else {"device": "cpu", "cpu_isa": pin, "threads": torch.get_num_threads()}
        comp = f"{self.compile_backend}/{self.compile_scope}" + (f"/{self.compile_mode}" if self.compile_mode else "")
        return {"device": dev, "autocast": "bfloat16" if self.amp else None,
                "channels_last": bool(self.channels_last), "compile": comp if self.compile else None}

    def describe(self) -> str:
        if self.is_cuda:
            name = torch.cuda.get_device_name(torch.device(self.device))
        else:
            name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        comp = f"compile per {'block' if self.compile_scope == 'blocks' else 'model'}" + \
            (f" {self.compile_mode}" if self.compile_mode else "")
        flags = [f for f, on in (("bf16", self.amp), ("channels_last", self.channels_last), (comp, self.compile)) if on]
        return f"{name}" + (f" [{', '.join(flags)}]" if flags else " [fp32 eager]")


@contextlib.contextmanager
def strict_fp32():
    """float32 that is float32 on a GPU too: cuDNN convolutions and CUDA matmuls may run in TF32
    by default (an H100's "fp32" convolutions do), which a baseline called fp32 must not. Both
    switches are restored afterwards; nothing changes on the CPU."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def configure_threads() -> int:
    """Honour the user's thread setting: ``RTLKIT_THREADS`` if set, else ``OMP_NUM_THREADS`` (which
    torch reads itself), else torch's default (one per physical core). Returns the count in force.
    The count changes the bits of CPU results (reduction order), so manifests record it."""
    n = thread_setting()
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def thread_setting() -> int | None:
    """``RTLKIT_THREADS`` checked (a whole number >= 1), or None when unset."""
    env = os.environ.get("RTLKIT_THREADS")
    if env is None or not env.strip():
        return None
    check(env.strip().isdigit() and int(env) >= 1, f"RTLKIT_THREADS must be a whole number >= 1, not {env!r}")
    return int(env)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _units(model: nn.Module, scope: str = "blocks") -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    return list(blocks) if scope == "blocks" and isinstance(blocks, nn.ModuleList) else [model]


def compile_blocks(model: nn.Module, backend="inductor", scope: str = "blocks",
                   mode: str | None = None) -> nn.Module:
    """``torch.compile`` each of ``model.blocks`` in place (with scope "model", or a model without
    blocks, the whole model: then only ``model(x)`` runs compiled); idempotent. Each compiled unit
    runs at bucketed batch sizes (:class:`BucketedCall`). ``backend``: a name, or a backend callable
    (a graph counter in the tests)."""
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for unit in _units(model, scope):
        if not is_compiled(unit):
            # what nn.Module.compile does (torch.compile of the module's call, kept in the attribute its
            # __call__ reads and its copies and pickles drop), with the batch bucketed around it
            compiled = torch.compile(unit._call_impl, dynamic=False, backend=backend, **({"mode": mode} if mode else {}))
            unit._compiled_call_impl = BucketedCall(unit, compiled)
    return model


# --------------------------------------------------------------------------- bucketed batch sizes
# Blocks compile with dynamic=False and Dynamo keys its graphs by the block's code, shared by every
# instance of a block class: each new batch size would compile every block class again (and, past the
# recompile limit, silently fall back to eager; cuDNN's autotuning reruns per shape too). Survivor
# subsets (our pruned PGD, pyautoattack's restarts, targets and Square queries), the card's last
# batches, certification tails and the last batch of a feature pass all have sizes of their own. So
# every compiled call runs at a batch size from a fixed set: the next power of two, at least
# MIN_BUCKET, with zero rows added and the output cut back. Only where rows are independent: no
# BatchNorm module of the unit in training mode (training batches have fixed sizes already: drop_last).
MIN_BUCKET = 16


def batch_bucket(n: int) -> int:
    """The batch size a compiled call of ``n`` rows runs at: the next power of two, at least MIN_BUCKET.
    At most 2x the rows, and log2(largest batch) sizes in all (16 ... 4,096: 9)."""
    return max(MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length())


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where a 4-d ``x`` is laid out so (and not also plainly contiguous), else contiguous."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def couples_rows(module: nn.Module) -> bool:
    """Whether a forward of ``module`` mixes the rows of its batch: a BatchNorm in training mode."""
    return any(m.training for m in module.modules() if isinstance(m, _BATCH_NORMS))


def _cut(out, n: int):
    if isinstance(out, torch.Tensor):
        return out[:n]
    if isinstance(out, (tuple, list)):
        return type(out)(_cut(o, n) for o in out)
    return out


class BucketedCall:
    """A compiled unit's call at a bucketed batch size (:func:`batch_bucket`): rows of zeros added
    in the input's memory format, the output's first ``n`` rows returned (gradients reach the input's
    own rows alone). Called with one tensor whose rows are independent (no BatchNorm of the unit in
    training mode); anything else goes to the compiled call as it is."""

    def __init__(self, unit: nn.Module, compiled):
        self.unit, self.compiled = unit, compiled
        self.exact: set[int] = set()   # sizes run as they are (:func:`keep_batch_size`)

    def __call__(self, *args, **kwargs):
        x = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            return self.compiled(*args, **kwargs)
        n = x.shape[0]
        b = batch_bucket(n)
        # a bucket-sized or declared batch (every full one) goes straight through, with no scan of the modules
        if b == n or n in self.exact or couples_rows(self.unit):
            return self.compiled(x)
        xp = torch.cat([x, x.new_zeros((b - n, *x.shape[1:]))]).contiguous(memory_format=memory_format_of(x))
        return _cut(self.compiled(xp), n)


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` itself was compiled in place. A deep copy is not: nn.Module drops the
    compiled call when copied or pickled, so a copy never runs its original's weights."""
    return module.__dict__.get("_compiled_call_impl") is not None


def keep_batch_size(model: nn.Module, n: int) -> None:
    """Let ``model``'s compiled units run batches of ``n`` rows as they are: a training batch, whose
    fixed size the training step compiles anyway, so its attack (in eval mode) pads nothing."""
    for unit in {id(u): u for u in _units(model) + [model]}.values():
        call = unit.__dict__.get("_compiled_call_impl")
        if isinstance(call, BucketedCall):
            call.exact.add(int(n))
