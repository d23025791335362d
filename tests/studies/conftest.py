"""The smoke suite, executed once per test session and shared: test_notebooks checks what it wrote,
and the browser test starts JupyterLab on a copy of its run cache (it tests the notebooks as a
person meets them, not the training a second time). Under pytest-xdist the workers share one
folder and a file lock: the first to ask runs the suite, the others wait for it and read it."""
import json
import os
from pathlib import Path

import pytest
from filelock import FileLock


@pytest.fixture(scope="session")
def smoke_suite(tmp_path_factory, worker_id):
    from rtlkit import figures
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent            # the folder every xdist worker's basetemp lies in
    root = shared / "smoke-suite"
    done = root / "times.json"
    with FileLock(str(shared / "smoke-suite.lock")):
        if not done.exists():
            root.mkdir(parents=True, exist_ok=True)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("RTLKIT_RUNS", str(root / "runs"))
                mp.setenv("RTLKIT_FIGURES", str(root / "figs"))
                mp.delenv("RTLKIT_DOWNLOAD", raising=False)
                times = figures.run("smoke", figures_dir=str(root / "figs"), out_dir=str(root / "executed"))
            done.write_text(json.dumps(times))
    return {"runs": root / "runs", "figs": root / "figs", "times": json.loads(done.read_text())}


@pytest.fixture(scope="session")
def worker_id(request):
    """pytest-xdist's worker id ("gw0", ...), or "master" without xdist."""
    return getattr(request.config, "workerinput", {}).get("workerid", "master")
