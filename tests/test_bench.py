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
