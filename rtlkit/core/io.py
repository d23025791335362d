"""Artefact files: atomic writes (temp file, fsync, rename), content hashes, stale-temp sweeping,
a full disk reported as such, and the fault points the reliability tests kill the process at.

Every writer serialises to bytes first and returns the sha256 of what it wrote, so a completion
marker can name each artefact with its hash without reading it back.
"""
from __future__ import annotations

import errno
import hashlib
import io as _io
import json
import os
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from rtlkit.core.errors import NoSpace

# RTLKIT_FAULT="point:n[,point:n...]" kills this process (SIGKILL, like a power cut or the OOM
# killer) the n-th time it reaches `point`: temp-written (temp file complete, not yet renamed),
# renamed (artefact in place), marker-written (run complete), step (a training step done).
# Read once at import; used by tests/runs/test_reliability.py. Unset, a point costs one dict lookup.
FAULT_ENV = "RTLKIT_FAULT"


def parse_faults(value: str) -> dict[str, int]:
    """``"point:n,point:n"`` -> {point: n}."""
    return {p: int(n) for p, _, n in (item.partition(":") for item in value.split(",")) if n.isdigit()}


_FAULTS: dict[str, int] = parse_faults(os.environ.get(FAULT_ENV, ""))
_fault_counts: dict[str, int] = {}
_HOST = "".join(c if c.isalnum() else "_" for c in os.uname().nodename)
# every temp file is named .<name>.<host>-<pid>.<random>.tmp: who may still be writing it


def fault_point(name: str) -> None:
    if name not in _FAULTS:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == _FAULTS[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks (a checkpoint may be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer reports a short write as "[enforce fail at inline_container.cc] unexpected pos"
    return isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "file write failed" in str(e))


def _open_for_write(path: str):
    return open(path, "wb")


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (readers see the old file or the new one, never a
    part); returns its sha256. A full disk is raised as NoSpace naming the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        with _open_for_write(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        fault_point("temp-written")
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(e):
            raise NoSpace(errno.ENOSPC, f"no space left on {path.parent} while writing {path.name} "
                          f"({len(data):,} bytes): free space there (or point RTLKIT_RUNS / RTLKIT_FIGURES "
                          f"elsewhere) and run again; finished artefacts are kept", str(path)) from e
        raise
    fault_point("renamed")
    return sha256_bytes(data)


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> str:
    """``write(file_object)`` into memory, then :func:`atomic_write_bytes`."""
    buf = _io.BytesIO()
    write(buf)
    return atomic_write_bytes(path, buf.getvalue())


def torch_bytes(obj: Any) -> bytes:
    """torch.save into memory. Saving to a file object, not a path, keeps the bytes free of the
    (random) temp-file name that torch would store inside the zip: identical states give identical files."""
    import torch
    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str | Path) -> str:
    return atomic_write_bytes(path, torch_bytes(obj))


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_text(path: str | Path, text: str) -> str:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> str:
    return atomic_write_text(path, json_text(obj))


def csv_bytes(df) -> bytes:
    return df.to_csv(index=False).encode()


def atomic_write_csv(path: str | Path, df) -> str:
    return atomic_write_bytes(path, csv_bytes(df))


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def sweep_tmp(folder: str | Path, dead_only: bool = False) -> list[Path]:
    """Remove the temp files (``.*.tmp``) a killed writer left in ``folder``. Call it only while
    holding the folder's lock: then no live writer owns any of them. With ``dead_only``, no lock is
    needed: only the files whose writer on this host has died go (:func:`_owner_alive`)."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if dead_only and _owner_alive(p):
                continue
            try:
                p.unlink()
                gone.append(p)
            except FileNotFoundError:
                pass
    return gone


def _owner_alive(tmp: Path) -> bool:
    """Whether the process that named the temp file ``tmp`` (``.<name>.<host>-<pid>.<random>.tmp``)
    may still be writing it: True for another host's or an older writer's file (no pid in its name),
    False once that pid on this host is gone."""
    parts = tmp.name.split(".")
    owner = next((p for p in parts if p.startswith(f"{_HOST}-") and p[len(_HOST) + 1:].isdigit()), None)
    if owner is None:
        return True
    try:
        os.kill(int(owner[len(_HOST) + 1:]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_aside(path: str | Path, why: str) -> Path | None:
    """Move a broken artefact out of the way as ``<name>.corrupt`` (kept for inspection), with a
    warning naming the file and why; the caller rebuilds it."""
    path = Path(path)
    if not path.exists():
        warnings.warn(f"rtlkit: {path}: {why}; rebuilding it", stacklevel=3)
        return None
    dest = path.with_name(path.name + ".corrupt")
    os.replace(path, dest)
    warnings.warn(f"rtlkit: {path}: {why}; moved aside to {dest.name} and rebuilding it", stacklevel=3)
    return dest
