"""The run store: a run's folder under ``RTLKIT_RUNS`` (default ``runs/``), named by its config's
hash and numerics; the completion marker and its checks; per-run locks (flock or a lease);
verified state dicts held in memory."""
from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from pathlib import Path

import torch

from rtlkit.core import data as D
from rtlkit.core import distributed
from rtlkit.core.errors import check
from rtlkit.core.io import read_json, set_aside, sha256_bytes
from rtlkit.core.runtime import cpu_isa_mode, Runtime, thread_setting

from rtlkit.runs.specs import stable_hash


def runs_root() -> Path:
    return Path(os.environ.get("RTLKIT_RUNS", D.REPO_ROOT / "runs"))


MARKER = "complete.json"
# 2: every attack reports each example's first fooling iterate (1: the last iterate)
EVAL_VERSION = 2


def run_key(run, runtime: Runtime | None = None) -> str:
    """The cache key of ``run`` computed under ``runtime``'s numerics (``Runtime.numerics``): the
    config's hash alone for fp32 eager on the CPU, the config's and the numerics' otherwise, so a
    bf16 or compiled result is never served for an fp32 request, nor the reverse."""
    num = (runtime or Runtime()).numerics()
    return stable_hash(run) if num is None else stable_hash({"run": run, "numerics": num})


def run_dir(run, runtime: Runtime | None = None) -> Path:
    return runs_root() / f"{run.kind}-{run_key(run, runtime)}"


LOCK_MODES = ("auto", "flock", "lease")


@functools.lru_cache(maxsize=None)
def _has_flock(locks: str) -> bool:
    """Whether the file system of the folder ``locks`` takes flock (NFS does, through its byte-range
    locks; some cluster file systems mounted without locking do not)."""
    import errno
    import fcntl
    probe = Path(locks) / f".flock-probe-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def lock_setting() -> str:
    """``RTLKIT_LOCK`` checked: auto (the default), flock or lease."""
    mode = os.environ.get("RTLKIT_LOCK", "auto") or "auto"
    check(mode in LOCK_MODES, f"RTLKIT_LOCK must be one of {', '.join(LOCK_MODES)}, not {mode!r}")
    return mode


def lease_seconds() -> float:
    """``RTLKIT_LOCK_LEASE_S`` checked: a positive, finite number of seconds (default 120)."""
    raw = os.environ.get("RTLKIT_LOCK_LEASE_S", "120")
    try:
        lease = float(raw)
    except ValueError:
        lease = None
    check(lease is not None and lease > 0 and lease != float("inf"),
          f"RTLKIT_LOCK_LEASE_S must be a positive number of seconds, not {raw!r}")
    return lease


def check_environment() -> None:
    """Every environment setting that changes what rtlkit does, checked at once: what each entry point
    (the CLIs, ``report.start``) calls before it makes a folder or starts a process. RTLKIT_CPU_ISA,
    RTLKIT_THREADS, RTLKIT_LOCK, RTLKIT_LOCK_LEASE_S, RTLKIT_DIST_TIMEOUT_S and RTLKIT_DEVICE."""
    cpu_isa_mode()
    thread_setting()
    lock_setting()
    lease_seconds()
    distributed.timeout_seconds()
    dev = os.environ.get("RTLKIT_DEVICE", "").strip()
    check(not dev or dev.split(":")[0] in ("cpu", "cuda", "mps"), f"RTLKIT_DEVICE must be cpu, cuda[:N] or mps, not {dev!r}")


def lock_mode(locks: Path) -> str:
    """``RTLKIT_LOCK``: flock (the kernel frees a dead holder's lock), lease (a lock file naming
    pid and host, renewed by a heartbeat: a peer breaks it at once when the holder's pid is dead on
    its own host, and after ``RTLKIT_LOCK_LEASE_S`` seconds without renewal from any host), or auto
    (flock where the file system has it, else lease). Every worker on a cache must use one mode."""
    mode = lock_setting()
    if mode == "auto":
        return "flock" if _has_flock(str(locks)) else "lease"
    return mode


def _lock(locks: Path, name: str):
    from filelock import FileLock, SoftFileLease
    if lock_mode(locks) == "flock":
        return FileLock(str(locks / f"{name}.lock"), is_singleton=True, thread_local=False, preserve_lock_file=True)
    return SoftFileLease(str(locks / f"{name}.lease"), lease_duration=lease_seconds(), is_singleton=True,
                         thread_local=False)


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold the per-run lock of ``folder`` (reentrant in this process). A second process asking for
    the same run waits here, then finds the first one's result. A dead holder's lock is broken
    (:func:`lock_mode`): by the kernel for flock, even after kill -9; by its pid and host, or its
    lease running out, for the lease that file systems without flock get."""
    from filelock import Timeout

    if not distributed.is_main():   # under torchrun rank 0 holds the run's lock for the whole group
        yield
        return
    lock_setting()   # a bad setting is an error before the locks folder exists
    lease_seconds()
    locks = folder.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = _lock(locks, folder.name)
    try:
        lock.acquire(timeout=2)
    except Timeout:
        print(f"rtlkit: waiting for {folder.name}: another process is training or evaluating it", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def read_marker(folder: Path, repair: bool = True) -> dict | None:
    """The completion marker of a run folder, or None when the run is not complete. An unreadable
    marker is set aside with ``repair`` (under the run's lock; the run is then rebuilt, from its
    last checkpoint)."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
        if not isinstance(marker.get("artefacts"), dict) or "model.pt" not in marker["artefacts"]:
            raise ValueError("no artefact table")
        return marker
    except (OSError, ValueError, AttributeError) as e:
        if repair:
            set_aside(path, f"unreadable completion marker ({type(e).__name__})")
        return None


def is_cached(run, runtime: Runtime | None = None) -> bool:
    return read_marker(run_dir(run, runtime), repair=False) is not None


# Weights verified in this process, most recent last: a cached transfer run loads its source every
# time it is asked for (a sweep, hundreds of times), and the weights-only unpickler and the sha256
# of every artefact are most of a cached run's cost. Keyed by each artefact's sha256 in the marker
# and its file's identity (inode, size, mtime): a file rewritten, replaced or set aside since is
# read and checked again. At most _STATES_BYTES of tensors are kept.
_STATES: dict = {}
_STATES_BYTES = 256 << 20


def _state_key(folder: Path, marker: dict) -> tuple | None:
    try:
        files = []
        for name, sha in sorted(marker["artefacts"].items()):
            st = (folder / name).stat()
            files.append((name, sha, st.st_ino, st.st_size, st.st_mtime_ns))
        return (str(folder.resolve()), tuple(files))
    except (OSError, AttributeError, TypeError):
        return None


def _remember_state(key: tuple, state: dict) -> None:
    size = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    if size > _STATES_BYTES:
        return
    _STATES[key] = (state, size)
    while sum(n for _, n in _STATES.values()) > _STATES_BYTES:
        del _STATES[next(iter(_STATES))]


def verified_state(folder: Path, marker: dict) -> dict | None:
    """The weights of a complete run, after checking every artefact against the marker's sha256;
    None (with the broken file and the marker set aside) on any mismatch. A state verified before
    in this process, whose files have not changed since, is not read again."""
    key = _state_key(folder, marker)
    if key is not None and key in _STATES:
        _STATES[key] = _STATES.pop(key)   # most recent last
        return dict(_STATES[key][0])      # the tensors are only ever copied from (load_state_dict)
    blobs = {}
    for name, sha in marker["artefacts"].items():
        path = folder / name
        if not path.is_file():
            why = f"listed in {MARKER} but missing"
        else:
            blobs[name] = path.read_bytes()
            if sha256_bytes(blobs[name]) == sha:
                continue
            why = f"content does not match the sha256 recorded in {MARKER}"
        set_aside(path, why)
        set_aside(folder / MARKER, f"names a broken artefact ({name})")
        return None
    try:
        state = torch.load(io.BytesIO(blobs["model.pt"]), map_location="cpu", weights_only=True)
    except Exception as e:  # whole by its hash, so it was written broken: never use it
        set_aside(folder / "model.pt", f"unreadable weights ({type(e).__name__})")
        set_aside(folder / MARKER, "names a broken artefact (model.pt)")
        return None
    if key is not None:   # bytes that match the marker's sha256s, whichever file they were read from
        _remember_state(key, state)
    return dict(state)
