"""The benchmark script runs end to end and writes its table (no timing is checked here: timings
belong in bench/, never in tests)."""
import json

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
