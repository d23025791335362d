"""The benchmark script runs end to end and writes its table (no timing is checked here: timings
belong in bench/, never in tests)."""
import json

import pytest

from bench import throughput


def test_benchmark_runs_our_code_and_writes_json(tmp_path, capsys):
    rc = throughput.main(["--model", "wrn-10-1-s2", "--input", "1x12x12", "--classes", "4", "--batch", "16",
                          "--eval-batch", "24", "--warmup", "1", "--steps", "1", "--repeats", "2",
                          "--eval-repeats", "1", "--paths", "eager fp32", "--accuracy", "none", "--trained", "none",
                          "--only", "AT (source)", "k=1", "own", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [r["workload"] for r in res["throughput"]] == ["PGD-7 AT (source)", "fine-tune k=1", "PGD-100 eval, own"]
    assert all(r["img_s"] > 0 and len(r["repeats"]) == (1 if "eval" in r["workload"] else 2) for r in res["throughput"])
    assert "| PGD-7 AT (source) |" in res["table"] and res["model"] == "wrn-10-1-s2"
    assert res["ratios"] == {} and res["verdicts"] == []   # one path: no ratio, no verdict


def test_bad_model_name_is_a_clear_error():
    import pytest
    with pytest.raises(SystemExit, match="wrn-<depth>-<width>"):
        throughput.parse_model("vgg16")
    assert throughput.parse_model("resnet18-small").depth == 18 and throughput.parse_model("wrn-34-10").depth == 34


def test_emulated_fingerprint_names_what_it_needs(monkeypatch):
    """`bench.cpu_isa --fingerprint --emulate MODEL` runs its child under qemu-user; without it, or
    with a model qemu does not know, it stops with one line before anything trains."""
    import shutil
    import subprocess
    from bench import cpu_isa
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="needs qemu-user"):
        cpu_isa.fingerprint(2, False, "avx2", emulate="EPYC-Milan")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/qemu-x86_64")
    listing = subprocess.CompletedProcess([], 0, stdout="Available CPUs:\nx86 EPYC-Milan  AMD EPYC-Milan Processor\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: listing)
    assert cpu_isa.emulator("EPYC-Milan") == ["/usr/bin/qemu-x86_64", "-cpu", "EPYC-Milan"]
    with pytest.raises(SystemExit, match="not a CPU model"):
        cpu_isa.emulator("Pentium-9000")


def test_the_gpu_smoke_stage_runs_dry_on_the_cpu(tmp_path):
    """`bench/device.sh smoke --dry`, as a user types it: every phase (training steps against eager
    fp32, evaluate through every attack, certify, two ranks) passes within its graph bound."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OUT": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run([str(root / "bench" / "device.sh"), "smoke", "--dry"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "smoke.json").read_text())
    names = [r["phase"] for r in res["phases"]]
    assert res["dry"] and len(names) == 6 and names[-1].startswith("two ranks"), names
    assert all(r["ok"] and (r["bound"] is None or r["graphs"] <= r["bound"]) for r in res["phases"])
    assert "smoke: passed" in p.stdout


def test_the_smoke_stage_fails_on_a_crash_or_a_graph_count_past_its_bound(tmp_path, monkeypatch, capsys):
    from bench import smoke
    real = smoke.phases

    def faulty(s, fast):
        out = real(s, fast)[:2]
        (name, run, bound), second = out[0], out[1]

        def crash():
            raise RuntimeError("view size is not compatible with input tensor's size and stride")
        return [(name, run, 0), (second[0], crash, second[2])]   # a bound of 0 graphs; a crash
    monkeypatch.setattr(smoke, "phases", faulty)
    monkeypatch.setattr(smoke.torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(smoke, "two_ranks", lambda dry: "skipped")
    import torch._dynamo
    torch._dynamo.reset()   # graphs an earlier test of this process compiled would otherwise be reused
    assert smoke.main(["--dry", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "smoke.json").read_text())["phases"]
    assert [r["ok"] for r in rows] == [False, False, True]
    assert "exceed the bound 0" in rows[0]["detail"] and "view size" in rows[1]["detail"]
    assert "smoke: FAILED" in capsys.readouterr().out
