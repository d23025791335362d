"""A fork server for tests/runs/test_reliability.py's child processes.

Importing torch and rtlkit takes a new interpreter 2-3 s, and the kill -9 tests start about fifty
children (a fault chain is ten processes per kind). Here one interpreter imports them once and
runs no tensor maths; every child is a fork of it: a process of its own, with its own memory and
its own pid, started in milliseconds, that dies by SIGKILL like any other and whose exit status
the server reports, as Popen would. What a fresh interpreter would read from its environment at
start-up is read again after the fork (rtlkit.core.io's fault points; the thread count is set by the
child's own code, configure_threads).

    server:  python tests/support/zygote.py          (stdin: one JSON request a line; stdout: one JSON reply)
    client:  Zygote(env) ... .spawn(argv, env) -> Forked (poll / wait / communicate / kill)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ server

def _child(req: dict) -> int:
    """In the forked process: the request's environment, argv and output files, then the child's main."""
    os.environ.clear()
    os.environ.update(req["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, req["out"]), (2, req["err"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    from rtlkit.core import io
    io._FAULTS.clear()
    io._FAULTS.update(io.parse_faults(os.environ.get(io.FAULT_ENV, "")))   # read at import in a fresh one
    sys.argv = [req["script"], *req["argv"]]
    import runpy
    try:
        runpy.run_path(req["script"], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


# what a child imports on its way (torch imports dynamo, inductor and sympy lazily): 1.3 s a child
PRELOAD = ("torch._dynamo", "torch._inductor", "sympy", "filelock", "statistics", "fractions",
           "torch.distributed.tensor", "torch.onnx", "cProfile", "pstats", "numpy.fft", "rtlkit.train.methods.fdm")


def serve() -> None:
    import importlib
    sys.path.insert(0, str(HERE))
    import fault_child  # noqa: F401  (torch, rtlkit and what the children import, once; no tensor maths)
    for name in PRELOAD:
        importlib.import_module(name)
    reply = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "spawn":
            pid = os.fork()
            if pid == 0:
                try:
                    code = _child(req)
                except BaseException:   # noqa: B036  (nothing may return into the server's loop)
                    code = 70
                os._exit(code)
            out = {"pid": pid}
        elif op == "poll":   # never a blocking wait: two children may run at once
            pid, status = os.waitpid(req["pid"], os.WNOHANG)
            out = {"rc": os.waitstatus_to_exitcode(status) if pid else None}
        else:
            out = {"error": f"unknown op {op!r}"}
        reply.write(json.dumps(out) + "\n")
        reply.flush()


# ------------------------------------------------------------------------------------------ client

class Zygote:
    """The server, started with ``env`` (what the children's interpreter would start with)."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__))], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.tmp = Path(tempfile.mkdtemp(prefix="zygote-"))
        self.spawned = 0

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (rc {self.proc.poll()})")
        return json.loads(line)

    def spawn(self, script: str, argv: list[str], env: dict) -> "Forked":
        self.spawned += 1   # a count, not the folder's files: a child creates its own after the fork
        out, err = self.tmp / f"{self.spawned}.out", self.tmp / f"{self.spawned}.err"
        pid = self.ask(op="spawn", script=str(script), argv=list(argv), env=dict(env), out=str(out), err=str(err))["pid"]
        return Forked(self, pid, out, err)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)


class Forked:
    """A forked child, used as a subprocess.Popen with text pipes is."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path):
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.ask(op="poll", pid=self.pid)["rc"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.out.read_text(), self.err.read_text()

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    serve()
