"""Every command-line entry point (figures, plan, launch, run, data) fails cleanly: a bad setting
or a bad file named on the command line is one ``prog: message`` line on stderr, exit status 2,
no traceback, and nothing written (no run cache, no notebooks folder, no figures folder)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtlkit.core import data as D
from rtlkit.suite import figures
from rtlkit.suite import launch
from rtlkit.suite import plan
from rtlkit.suite import run

REPO = Path(__file__).resolve().parents[2]


def one_line_error(capsys, rc, prog, *needles):
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err and err.startswith(f"{prog}: "), err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def empty_data(tmp_path, monkeypatch):
    """No torchvision dataset on this machine (an empty RTLKIT_DATA), and no loader cache."""
    monkeypatch.setenv("RTLKIT_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr(D, "_CACHE", {})
    return tmp_path / "no-data"


def nothing_written(tmp_path):
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    assert not (tmp_path / "figures").exists()


CASES = {
    "launch on a machine without Slurm": (launch.main, "rtlkit.suite.launch",
                                          ["--profile", "smoke", "--only", "01", "--executor", "slurm"], "no Slurm"),
    "launch --timeout-min -5": (launch.main, "rtlkit.suite.launch", ["--profile", "smoke", "--timeout-min", "-5"],
                                "--timeout-min must be a whole number >= 1"),
    "launch --threads -2": (launch.main, "rtlkit.suite.launch", ["--profile", "smoke", "--threads", "-2"],
                            "--threads must be a whole number >= 1"),
    "launch --threads 0": (launch.main, "rtlkit.suite.launch", ["--profile", "smoke", "--threads", "0"],
                           "--threads must be a whole number >= 1"),
    "launch --only 99": (launch.main, "rtlkit.suite.launch", ["--profile", "smoke", "--only", "99"], "--only 99 matches no"),
    "launch --status --only 99": (launch.main, "rtlkit.suite.launch", ["--profile", "smoke", "--status", "--only", "99"],
                                  "--only 99 matches no"),
    "run --list --only 99": (run.main, "rtlkit.suite.run", ["--profile", "smoke", "--list", "--only", "99"],
                             "--only 99 matches no"),
    "run --device bogus": (run.main, "rtlkit.suite.run", ["--profile", "smoke", "--list", "--device", "bogus"],
                           "unknown device 'bogus'"),
    "plan --only 99": (plan.main, "rtlkit.suite.plan", ["--profile", "smoke", "--only", "99"], "--only 99 matches no"),
    "plan --bench missing": (plan.main, "rtlkit.suite.plan", ["--profile", "smoke", "--bench", "/nonexistent/b.json"],
                             "/nonexistent/b.json: cannot be read"),
    "figures --device bogus": (figures.main, "rtlkit.suite.figures", ["--profile", "smoke", "--device", "bogus"],
                               "unknown device 'bogus'"),
    "figures --only 99": (figures.main, "rtlkit.suite.figures", ["--profile", "smoke", "--only", "99"],
                          "no notebook matches"),
    "figures --dry-run of another profile": (figures.main, "rtlkit.suite.figures", ["--profile", "quick", "--dry-run"],
                                             "--dry-run is the paper profile's"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_command_line_is_one_line_and_status_2_before_any_file(case, capsys, tmp_path, monkeypatch):
    main, prog, argv, needle = CASES[case]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")   # no Slurm here, whatever the host has
    monkeypatch.setattr(launch, "run_waves", lambda *a, **k: pytest.fail("a job was submitted"))
    one_line_error(capsys, main(argv), prog, needle)
    nothing_written(tmp_path)


@pytest.mark.parametrize("content, what", [(None, "not JSON"), ("[1, 2]", "a JSON list"), ('"x"', "a JSON str"),
                                           ("{not json", "not JSON")])
def test_a_bad_bench_file_is_one_error(content, what, capsys, tmp_path):
    path = tmp_path / "bench.json"
    path.write_bytes(b"\x00\x01" if content is None else content.encode())
    one_line_error(capsys, plan.main(["--profile", "smoke", "--bench", str(path)]), "rtlkit.suite.plan", what)
    nothing_written(tmp_path)


def test_plan_json_goes_into_a_new_folder_and_a_file_in_the_way_is_one_error(capsys, tmp_path):
    assert plan.main(["--profile", "smoke", "--only", "01", "--json", str(tmp_path / "new" / "plan.json")]) == 0
    assert json.loads((tmp_path / "new" / "plan.json").read_text())["profile"] == "smoke"
    capsys.readouterr()
    (tmp_path / "a-file").write_text("x")
    one_line_error(capsys, plan.main(["--profile", "smoke", "--json", str(tmp_path / "a-file" / "plan.json")]),
                   "rtlkit.suite.plan", "is a file, not a folder")
    nothing_written(tmp_path)


def test_figures_dir_that_is_a_file_fails_before_the_notebooks_folder(capsys, tmp_path, monkeypatch):
    target = tmp_path / "a-file"
    target.write_text("x")
    monkeypatch.setattr(figures, "suite_plan", lambda *a, **k: pytest.fail("planned before checking the folder"))
    one_line_error(capsys, figures.main(["--profile", "smoke", "--figures-dir", str(target / "sub")]),
                   "rtlkit.suite.figures", "is a file, not a folder")
    nothing_written(tmp_path)


def test_plan_of_the_paper_profile_without_its_data_counts_at_torchvision_sizes(capsys, empty_data, tmp_path):
    out_json = tmp_path / "plan.json"
    assert plan.main(["--profile", "paper", "--only", "01", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "missing on this machine" in out and "cifar100" in out and "rtlkit data --download cifar100" in out
    p = json.loads(out_json.read_text())
    assert p["missing_datasets"] == ["cifar10", "cifar100"]
    # CIFAR-100's 50,000 training images: the source's epochs x steps of 128 (the last partial batch dropped)
    src = next(r for r in p["trainings"] if r["kind"] == "source")
    assert src["images"] == 100 * (50000 // 128) * 128
    assert p["gpu_hours"]["per_notebook"]["01_layer_freezing"] > 1
    assert not (tmp_path / "runs").exists() and not D._CACHE   # no stand-in is kept


def test_the_data_check_names_every_missing_set_at_once(capsys, empty_data, tmp_path):
    err = one_line_error(capsys, plan.main(["--profile", "paper", "--check"]), "rtlkit.suite.plan")
    for name in ("cifar100", "cifar10", "svhn", "gtsrb", "stl10", "mnist", "kmnist"):
        assert f"  - {name}: " in err, err
    nothing_written(tmp_path)


def test_a_missing_paper_dataset_is_one_error_naming_all_before_any_run(capsys, empty_data, tmp_path, monkeypatch):
    from rtlkit.suite import session as report
    with pytest.raises(D.DatasetNotFound) as e:
        report.probe_datasets(__import__("rtlkit.studies.profiles", fromlist=["get"]).get("paper", gpu=True))
    assert "2 dataset(s) missing: cifar100, cifar10" in str(e.value)
    one_line_error(capsys, launch.main(["--profile", "paper", "--only", "01"]), "rtlkit.suite.launch", "cifar100, cifar10")
    nothing_written(tmp_path)


def test_the_entry_points_print_no_traceback_as_processes(tmp_path):
    """The same through ``python -m``, as a user types it."""
    env = {"PATH": "/usr/bin:/bin", "RTLKIT_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(REPO)}
    for argv in (["rtlkit.suite.plan", "--bench", str(tmp_path / "none.json")],
                 ["rtlkit.suite.launch", "--profile", "smoke", "--executor", "slurm"],
                 ["rtlkit.core.data", "no-such-set"]):
        p = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "runs").exists()


def test_one_rtlkit_command_lists_and_runs_every_subcommand(capsys):
    """``rtlkit`` (pyproject's console script): its help names every command; each command's
    --help is that module's own; an unknown command is one error with status 2."""
    from rtlkit import cli
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name
    with pytest.raises(SystemExit) as e:
        cli.main(["figurez"])
    assert e.value.code == 2 and "unknown command 'figurez'" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["findings", "--figures-dir", "/no/such/folder"]) == 2   # the module's own clean error
    assert "--figures-dir /no/such/folder" in capsys.readouterr().err
    assert "rtlkit = \"rtlkit.cli:main\"" in (REPO / "pyproject.toml").read_text()
