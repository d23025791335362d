"""The surfaces where a researcher's own files and settings come in, held to the run cache's standard:
each fault is refused with one line naming the file or the setting before any compute, any folder or
any process, or never served. Faults are injected by kind (as tests/runs/test_reliability.py does for the
cache): user files (arrays, images, checkpoints), settings (environment, notebook parameters,
options), commands run as a user types them (subprocesses), and cleanup on every exit path.

    pytest tests/runs/test_user_faults.py        # every case below
"""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from rtlkit import ConfigError
from rtlkit.core import data as D
from rtlkit.core.models.resnet import ResNetSpec
from rtlkit.runs.specs import ExternalSource

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_00 = REPO / "notebooks" / "00_your_transfer.ipynb"


def user_command(argv, tmp_path, timeout=300, **env):
    """``python -m ...`` as a user types it: its own process, the repository on its path, the test's
    run cache and figures folder (conftest), and ``env`` on top."""
    e = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", **env}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=e, cwd=tmp_path,
                          timeout=timeout)


def one_line(p, *needles, rc=2):
    assert p.returncode == rc, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1, p.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


# --------------------------------------------------------------------------- kind 1: array files

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


X = np.zeros((6, 8, 8), np.uint8)
Y = np.array([0, 0, 1, 1, 2, 2])

NPZ_CASES = {
    "a label of 1e8": (dict(x=X, y=np.array([0, 0, 1, 1, 2, 100_000_000])), {}, "labels reach 100000000"),
    "a label past the class names": (dict(x=X, y=Y, classes=np.array(["a", "b"])), {}, "2 class names are given"),
    "x_test without y_test": (dict(x=X, y=Y, x_test=X[:3]), {}, "x_test and y_test come together"),
    "y_test without x_test": (dict(x=X, y=Y, y_test=Y[:3]), {}, "x_test and y_test come together"),
    "an empty x_test": (dict(x=X, y=Y, x_test=X[:0], y_test=Y[:0]), {}, "x_test holds no images"),
    "size 0": (dict(x=X, y=Y), dict(size=0), "size must be a whole number >= 8"),
    "test_fraction 1.5": (dict(x=X, y=Y), dict(test_fraction=1.5), "test_fraction must be in"),
    "test_fraction 'half'": (dict(x=X, y=Y), dict(test_fraction="half"), "test_fraction must be in"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_a_bad_array_file_is_one_error_naming_it(case, tmp_path):
    arrays, kw, message = NPZ_CASES[case]
    path = _npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(ConfigError, match=message) as e:
        D.array_file(path, **kw)
    assert "mine.npz" in str(e.value)


def test_a_stray_label_is_refused_at_once_not_after_building_its_classes(tmp_path):
    """Labels up to 1e8 once built 1e8 class names (8 GB, minutes): now the check comes first."""
    import time
    path = _npz(tmp_path / "big.npz", x=X, y=np.array([0, 0, 1, 1, 2, 100_000_000]))
    t = time.perf_counter()
    with pytest.raises(ConfigError):
        D.array_file(path)
    assert time.perf_counter() - t < 5


# --------------------------------------------------------------------------- kind 1: image folders

def _png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (its IHDR, with a correct CRC) and whose
    pixel data is a few bytes: what a decompression bomb or a mislabelled file looks like to PIL."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def _folder(root, classes=("a", "b"), n=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("width, height", [(30000, 30000), (100_000, 1000)])
def test_an_image_whose_header_claims_too_many_pixels_is_refused_before_decoding(width, height, tmp_path):
    root = _folder(tmp_path / "imgs")
    _png_header_only(root / "a" / "huge.png", width, height)
    with pytest.raises(ConfigError, match=r"huge.png: .*over the .*-pixel budget"):
        D.image_folder(root)


@pytest.mark.parametrize("kw, message", [(dict(size=0), "size must be a whole number >= 8"),
                                         (dict(size=7.5), "size must be a whole number >= 8"),
                                         (dict(test_fraction=1.5), "test_fraction must be in")])
def test_a_bad_option_of_an_image_folder_is_one_error(kw, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        D.image_folder(_folder(tmp_path / "imgs"), **kw)


# --------------------------------------------------------------------------- kind 1: checkpoints

def _resnet18_state(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=4).state_dict()


def _nan_weights(path):
    sd = _resnet18_state()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["fc.bias"][1] = float("inf")
    torch.save(sd, path)


def _half_normaliser_rtlkit(path):
    from rtlkit.core.models import build
    m = build(ResNetSpec(18), 4, 3, (0.5,) * 3, (0.25,) * 3)
    sd = {k: v for k, v in m.state_dict().items() if k != "normalize.std"}
    torch.save(sd, path)


def _half_normaliser_robustness(path):
    sd = _resnet18_state()
    torch.save({"model": {**{f"module.model.{k}": v for k, v in sd.items()},
                          "module.normalizer.new_mean": torch.tensor([0.5, 0.5, 0.5])}}, path)


CHECKPOINT_CASES = {
    "an empty file": (lambda p: p.write_bytes(b""), "torchvision", "cannot be read as a torch file"),
    "NaN and inf weights": (_nan_weights, "torchvision", r"2 tensor\(s\) hold NaN or infinite values"),
    "a mean without a std (rtlkit)": (_half_normaliser_rtlkit, "rtlkit", "has normalize.mean but no normalize.std"),
    "a mean without a std (robustness)": (_half_normaliser_robustness, "robustness",
                                          "has module.normalizer.new_mean but no module.normalizer.new_std"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_bad_checkpoint_is_one_error_when_it_is_named(case, tmp_path, runs_root):
    """Refused where it enters (ExternalSource), before any run: a NaN checkpoint used to evaluate to
    0.25 and be cached."""
    write, fmt, message = CHECKPOINT_CASES[case]
    path = tmp_path / "mine.pth"
    write(path)
    with pytest.raises(ConfigError, match=message) as e:
        ExternalSource(ResNetSpec(18), str(path), fmt, num_classes=4)
    assert "mine.pth" in str(e.value)
    assert not runs_root.exists() or not any(runs_root.iterdir())


def test_a_good_checkpoint_is_built_once_per_process_when_named(tmp_path, monkeypatch):
    from rtlkit.runs import specs
    torch.save(_resnet18_state(), tmp_path / "ok.pth")
    calls = []
    real = specs.read_checkpoint
    monkeypatch.setattr(specs, "read_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        ExternalSource(ResNetSpec(18), str(tmp_path / "ok.pth"), num_classes=4)
    assert len(calls) == 1


# --------------------------------------------------------------------------- kind 2: settings from the environment

@pytest.mark.parametrize("var, value", [("RTLKIT_CPU_ISA", "bogus"), ("RTLKIT_THREADS", "-3"),
                                        ("RTLKIT_THREADS", "two"), ("RTLKIT_LOCK", "bogus"),
                                        ("RTLKIT_LOCK_LEASE_S", "-1"), ("RTLKIT_LOCK_LEASE_S", "inf"),
                                        ("RTLKIT_DIST_TIMEOUT_S", "soon"), ("RTLKIT_DEVICE", "tpu")])
def test_every_environment_setting_is_checked_from_python_too(var, value, monkeypatch):
    from rtlkit.runs.store import check_environment
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        check_environment()


def test_a_bad_cpu_mode_is_an_error_from_python_not_a_silent_native(monkeypatch):
    from rtlkit.core.runtime import Runtime
    monkeypatch.setenv("RTLKIT_CPU_ISA", "bogus")
    with pytest.raises(ConfigError, match="RTLKIT_CPU_ISA must be one of"):
        Runtime("cpu")


@pytest.mark.parametrize("var, value", [("RTLKIT_LOCK", "bogus"), ("RTLKIT_LOCK_LEASE_S", "-1")])
def test_a_bad_lock_setting_makes_no_locks_folder(var, value, monkeypatch, runs_root):
    from rtlkit.runs.store import run_lock
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        with run_lock(runs_root / "source-0123456789ab"):
            pass
    assert not (runs_root / ".locks").exists()


def test_a_pinned_result_is_keyed_by_its_thread_count(monkeypatch):
    """The thread count changes a pinned CPU run's bits (reduction order), so it is in its key: a run
    on 1 thread never serves one on 2."""
    from rtlkit.core import runtime as R
    monkeypatch.setattr(R, "cpu_isa_pinned", lambda: "avx2")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = R.Runtime("cpu").numerics()
        torch.set_num_threads(2)
        two = R.Runtime("cpu").numerics()
    finally:
        torch.set_num_threads(old)
    assert one == {"device": "cpu", "cpu_isa": "avx2", "threads": 1} and two["threads"] == 2


# --------------------------------------------------------------------------- kind 3: commands, as a user types them

@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    """A finished run in a run cache of its own: a tiny source trained by the library."""
    from rtlkit.measure.attacks import PGD
    from rtlkit.core.models.wrn import WRNSpec
    from rtlkit.runs.specs import DataSpec, SourceRun
    from rtlkit.runs.cache import get_or_train
    from rtlkit.runs.store import run_dir
    from rtlkit.core.runtime import Runtime
    from rtlkit.train.loop import AdversarialTraining
    root = tmp_path_factory.mktemp("cache") / "runs"
    os.environ["RTLKIT_RUNS"] = str(root)
    try:
        run = SourceRun(DataSpec("synthetic-a"), WRNSpec(10, 1, stem_stride=2),
                        AdversarialTraining(epochs=1, batch_size=64, attack=PGD(0.1, 1, 0.1)), seed=0)
        get_or_train(run, Runtime("cpu"), progress=False)
        return root, run_dir(run, Runtime("cpu")).name
    finally:
        del os.environ["RTLKIT_RUNS"]


def test_the_card_command_cards_a_cached_run(cached_run, tmp_path):
    """`rtlkit card` once compared its own __main__ Card with the profiles' Card and
    failed on every valid call."""
    root, name = cached_run
    p = user_command(["rtlkit.suite.card", "--profile", "smoke", "--test-n", "8", name], tmp_path, timeout=600,
                     RTLKIT_RUNS=str(root))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"report card of {name}" in p.stdout and "1 non-increasing in eps" in p.stdout


@pytest.mark.parametrize("argv, env, needles", [
    (["rtlkit.suite.card", "--profile", "bogus", "--list"], {}, ("unknown profile 'bogus'",)),
    (["rtlkit.suite.card", "--list", "--device", "tpu"], {}, ("unknown device 'tpu'",)),
    (["rtlkit.suite.run", "--profile", "smoke", "--list"], {"RTLKIT_THREADS": "-3"}, ("RTLKIT_THREADS must be",)),
    (["rtlkit.suite.run", "--profile", "smoke", "--list"], {"RTLKIT_CPU_ISA": "bogus"}, ("RTLKIT_CPU_ISA must be",)),
    (["rtlkit.suite.figures", "--profile", "smoke", "--only", "01"], {"RTLKIT_LOCK": "bogus"}, ("RTLKIT_LOCK must be",)),
    (["rtlkit.suite.figures", "--profile", "smoke", "--only", "01"], {"RTLKIT_LOCK_LEASE_S": "0"},
     ("RTLKIT_LOCK_LEASE_S must be",)),
    (["rtlkit.suite.plan", "--profile", "smoke"], {"RTLKIT_DIST_TIMEOUT_S": "-1"}, ("RTLKIT_DIST_TIMEOUT_S must be",)),
])
def test_a_bad_setting_is_one_line_and_status_2_before_any_folder(argv, env, needles, tmp_path):
    p = user_command(argv, tmp_path, **env)
    one_line(p, *needles)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_figures_names_every_missing_dataset_before_any_folder(tmp_path):
    p = user_command(["rtlkit.suite.figures", "--profile", "paper", "--only", "01"], tmp_path,
                     RTLKIT_DATA=str(tmp_path / "no-data"))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "cifar100" in p.stderr and "cifar10" in p.stderr
    assert not (tmp_path / "runs").exists()   # no runs/notebooks before the error


def test_findings_on_a_corrupt_csv_is_one_line_naming_it(tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "02_bn_ablation.csv").write_bytes(b'k,robust_acc\n4,"0.8\n\xff\xfe,,,\n')
    p = user_command(["rtlkit.suite.findings", "--figures-dir", str(figs)], tmp_path)
    one_line(p, "02_bn_ablation.csv: not a readable CSV table")


def test_reproduce_with_a_bad_cpu_mode_stops_before_cloning(tmp_path):
    p = user_command(["bench.reproduce", "--only", "01"], tmp_path, RTLKIT_CPU_ISA="bogus", TMPDIR=str(tmp_path))
    one_line(p, "RTLKIT_CPU_ISA must be one of")
    assert not list(tmp_path.glob("rtlkit-reproduce-*"))


def test_reproduce_removes_its_clone_when_the_clones_run_fails(tmp_path, monkeypatch):
    """Cleanup on every exit path: a failed run, or Ctrl-C in it, leaves no temporary clone."""
    from bench import reproduce
    monkeypatch.setattr(reproduce.tempfile, "tempdir", str(tmp_path))
    for fault in (reproduce.CloneFailed("exit 1"), KeyboardInterrupt()):
        def fail(only, as_avx2, dest, fault=fault):
            dest.mkdir(parents=True)
            (dest / "half-written").write_text("x")
            raise fault
        monkeypatch.setattr(reproduce, "_run_clone", fail)
        with pytest.raises(type(fault)):
            reproduce.run_clone(["01"], False, None)
        assert not list(tmp_path.glob("rtlkit-reproduce-*"))
    keep = tmp_path / "kept"
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_clone(["01"], False, keep)
    assert keep.exists()   # --keep: the user asked for it


def test_reproduce_compares_an_empty_csv_as_a_difference(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "01_layer_freezing.csv").write_bytes(b"")
    p = user_command(["bench.reproduce", "--only", "01", "--compare", str(fresh)], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "01_layer_freezing.csv: DIFFERS in shape or columns" in p.stdout


# --------------------------------------------------------------------------- kind 4: notebook 00 under papermill

def _run_00(tmp_path, **params):
    import papermill
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(NOTEBOOK_00), str(out), kernel_name="python3", progress_bar=False,
                                   parameters=dict(profile="smoke", figures_dir=str(tmp_path / "figs"), interactive=False,
                                                   **params))
    return e.value


@pytest.mark.parametrize("params, message", [
    (dict(source_name="bogus"), "notebook 00_your_transfer has no parameter source_name"),
    (dict(source_size=3), "source_size must be a whole number of pixels >= 8"),
    (dict(source_size=32), "source_size without source_path"),
])
def test_notebook_00_refuses_a_bad_parameter_before_any_compute(params, message, tmp_path):
    err = _run_00(tmp_path, **params)
    assert err.ename == "ConfigError" and message in err.evalue, (err.ename, err.evalue)
    assert not (tmp_path / "figs").exists() or not any((tmp_path / "figs").iterdir())


def test_notebook_00_refuses_a_users_bad_files(tmp_path):
    bad = _npz(tmp_path / "labels.npz", x=X, y=np.array([0, 0, 1, 1, 2, 100_000_000]))
    err = _run_00(tmp_path, target_dir=str(bad))
    assert err.ename == "ConfigError" and "labels reach 100000000" in err.evalue
    _nan_weights(tmp_path / "nan.pth")
    err = _run_00(tmp_path, source_arch="resnet18", source_path=str(tmp_path / "nan.pth"),
                  target_dir=str(_npz(tmp_path / "ok.npz", x=np.zeros((6, 16, 16), np.uint8), y=Y)))
    assert err.ename == "ConfigError" and "NaN or infinite" in err.evalue


# --------------------------------------------------------------------------- kind 5: what a user reads

def test_the_suite_bar_names_only_a_run_of_this_suite_in_training(tmp_path):
    from rtlkit.suite.figures import _current_run
    mine, other = tmp_path / "source-aaaaaaaaaaaa", tmp_path / "head-bbbbbbbbbbbb"
    for d, name in ((mine, "fashion-mnist"), (other, "my_images@09f03f9a1a4a")):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"data": {"name": name}}))
    os.utime(other, None)   # the other suite's folder is the newest
    assert _current_run([str(mine / "complete.json")]) == "source fashion-mnist"
    (mine / "complete.json").write_text("{}")
    assert _current_run([str(mine / "complete.json")]) == ""   # nothing of this suite in training: no name


def test_notebook_kernels_talk_over_ipc_without_the_tcp_warning(tmp_path):
    import nbformat
    from rtlkit.suite.figures import ipc_kernel_manager
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os; print(os.getpid())")]
    nbformat.write(nb, str(tmp_path / "t.ipynb"))
    code = ("import papermill, sys; from rtlkit.suite.figures import ipc_kernel_manager; "
            f"papermill.execute_notebook({str(tmp_path / 't.ipynb')!r}, {str(tmp_path / 'o.ipynb')!r}, "
            "kernel_name='python3', progress_bar=False, kernel_manager_class=ipc_kernel_manager())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "without encryption" not in p.stderr and "IPKernelApp" not in p.stderr, p.stderr
    assert ipc_kernel_manager()().transport == "ipc"


# --------------------------------------------------------------------------- rtlkit card on any checkpoint and images

def _image_folder(root, classes=4, per_class=10, size=32):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_the_card_command_cards_a_checkpoint_on_a_folder_and_writes_its_csv(tmp_path):
    torch.save(_resnet18_state(), tmp_path / "mine.pth")
    _image_folder(tmp_path / "imgs")
    p = user_command(["rtlkit.suite.card", "--arch", "resnet18", "--checkpoint", "mine.pth", "--data", "imgs",
                      "--eps", "8/255", "--test-n", "8", "--profile", "smoke", "--out", "card.csv"], tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "report card of mine: linf eps=0.03137" in p.stdout
    summary, checks = pd.read_csv(tmp_path / "card.csv"), pd.read_csv(tmp_path / "card-checks.csv")
    assert {"PGD-CE", "APGD-CE", "Square"} <= set(summary.iloc[:, 0]) and summary.accuracy.between(0, 1).all()
    assert len(checks) == 6 and set(checks.status) <= {"pass", "warn", "none"}


@pytest.mark.parametrize("change, needle", [
    ({"--checkpoint": "nope.pth"}, "--checkpoint nope.pth: no such file"),
    ({"--eps": "8/25x"}, "--eps 8/25x: not a number or a fraction like 8/255"),
    ({"--eps": "2"}, "--eps 2 = 2: outside (0, 1] for linf"),
    ({"--data": "empty"}, "empty"),
    ({"--data": "nowhere"}, "--data nowhere: no such folder or file"),
    ({"--arch": "wrn-28-10"}, "mine.pth"),
    ({"--data": None}, "a checkpoint's card needs --data"),
])
def test_a_bad_card_input_is_one_line_and_status_2_before_any_compute(change, needle, tmp_path):
    torch.save(_resnet18_state(), tmp_path / "mine.pth")
    _image_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "empty").mkdir()
    args = {"--arch": "resnet18", "--checkpoint": "mine.pth", "--data": "imgs", "--eps": "8/255", **change}
    argv = ["rtlkit.suite.card"] + [x for k, v in args.items() if v is not None for x in (k, v)]
    one_line(user_command(argv, tmp_path), needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not list(tmp_path.glob("card-*.csv"))
