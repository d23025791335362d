"""The pinned CPU mode (RTLKIT_CPU_ISA=avx2): the same smoke training gives the same weights
whatever the host's instruction set. Another host is emulated by capping each library's ISA the
way an AVX2-only CPU would (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS);
the pin must give one set of bits under every such host, while unpinned runs differ. The portable
mode also takes oneDNN and MKL's vendor branches out of the picture."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtlkit import ConfigError
from rtlkit.core import runtime as R

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import hashlib, json, torch
torch.set_num_threads(2)
from rtlkit.studies import profiles
from rtlkit.runs import cache as runs
from rtlkit.core.runtime import Runtime, cpu_record, pin_cpu_isa
pin_cpu_isa()                       # what the CLIs do first: RTLKIT_CPU_ISA from the environment
run = profiles.get("smoke", gpu=False).source_run()
model = runs.get_or_train(run, Runtime(device="cpu"), progress=False)
blob = b"".join(v.numpy().tobytes() for _, v in sorted(model.state_dict().items()))
print(json.dumps({"sha": hashlib.sha256(blob).hexdigest(), "dir": runs.run_dir(run, Runtime(device="cpu")).name,
                  **cpu_record()}))
"""
HOSTS = {   # what the host's own CPU offers, as each library sees it
    "this CPU": {},
    "AVX2-only CPU": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "ATen at its default level": {"ATEN_CPU_CAPABILITY": "default"},
}
LIB_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", R.CPU_ISA_ENV)


def train(tmp_path, mode: str | None, host: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LIB_VARS}
    env.update(host, RTLKIT_RUNS=str(tmp_path / f"runs-{len(list(tmp_path.iterdir()))}"), PYTHONPATH=str(REPO))
    if mode is not None:
        env[R.CPU_ISA_ENV] = mode
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


needs_avx2 = pytest.mark.skipif("avx2" not in R.cpu_flags(), reason="the pin needs an AVX2 CPU")


@needs_avx2
def test_the_pinned_mode_gives_the_same_weights_whatever_the_hosts_instruction_set(tmp_path):
    pinned = {name: train(tmp_path, "avx2", host) for name, host in HOSTS.items()}
    assert len({r["sha"] for r in pinned.values()}) == 1, {k: r["sha"][:12] for k, r in pinned.items()}
    for r in pinned.values():
        assert r["cpu_capability"] == "AVX2" and r["cpu_isa_pinned"] == "avx2"
        assert r["cpu_isa_env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and r["cpu_isa_env"]["MKL_CBWR"] == "AVX2"
    native = {name: train(tmp_path, "native", host) for name, host in HOSTS.items()}
    assert pinned["this CPU"]["sha"] == native["AVX2-only CPU"]["sha"]   # the pin = what an AVX2 CPU computes
    assert pinned["this CPU"]["dir"] != native["this CPU"]["dir"]        # pinned bits have cache keys of their own
    if native["this CPU"]["cpu_capability"] != "AVX2":   # a wider host: unpinned, its bits are its own
        assert native["this CPU"]["sha"] != native["AVX2-only CPU"]["sha"]
    assert native["ATen at its default level"]["sha"] != native["AVX2-only CPU"]["sha"]


PORTABLE_HOSTS = {   # the AVX2 mode's hosts, and one whose MKL offers SSE4.2 at most
    **HOSTS, "SSE4.2-only CPU": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}


def test_the_portable_mode_gives_the_same_weights_even_where_mkl_and_onednn_would_differ(tmp_path):
    """Portable: ATen at its scalar level, oneDNN and NNPACK off, MKL in its COMPATIBLE code path,
    so no library picks kernels by the host's ISA (or, for MKL, its vendor)."""
    runs = {name: train(tmp_path, "portable", host) for name, host in PORTABLE_HOSTS.items()}
    assert len({r["sha"] for r in runs.values()}) == 1, {k: r["sha"][:12] for k, r in runs.items()}
    for r in runs.values():
        assert r["cpu_capability"] == "DEFAULT" and r["cpu_isa_pinned"] == "portable" and r["onednn"] is False
        assert r["cpu_isa_env"]["MKL_CBWR"] == "COMPATIBLE"
    assert len({r["dir"] for r in runs.values()}) == 1
    if "avx2" in R.cpu_flags():   # its own bits, under its own cache keys
        avx2 = train(tmp_path, "avx2", {})
        assert avx2["dir"] != runs["this CPU"]["dir"]


@needs_avx2
def test_the_vendor_neutral_avx2_mode_gives_one_set_of_weights_under_every_isa_cap(tmp_path):
    """avx2-compat: avx2's ATen and oneDNN, MKL in its COMPATIBLE path (the one MKL promises on
    every x86 vendor; whether AMD then matches Intel is measured by emulation in bench/cpu_isa.py,
    not here). Under each emulated ISA cap, MKL's SSE4.2-only host included, one set of weights,
    under cache keys of its own."""
    runs = {name: train(tmp_path, "avx2-compat", host) for name, host in PORTABLE_HOSTS.items()}
    assert len({r["sha"] for r in runs.values()}) == 1, {k: r["sha"][:12] for k, r in runs.items()}
    for r in runs.values():
        assert r["cpu_capability"] == "AVX2" and r["cpu_isa_pinned"] == "avx2-compat" and r["onednn"] is True
        assert r["cpu_isa_env"]["MKL_CBWR"] == "COMPATIBLE" and r["cpu_isa_env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert train(tmp_path, "avx2", {})["dir"] != runs["this CPU"]["dir"]


def test_a_bad_mode_is_one_error(monkeypatch):
    monkeypatch.setenv(R.CPU_ISA_ENV, "avx9000")
    with pytest.raises(ConfigError, match="RTLKIT_CPU_ISA must be one of native, avx2, avx2-compat, portable"):
        R.cpu_isa_mode()


def test_the_committed_figures_profile_is_pinned_by_default_and_the_rest_is_not(monkeypatch):
    monkeypatch.delenv(R.CPU_ISA_ENV, raising=False)
    assert R.default_cpu_isa("quick", "cpu") == ("avx2-compat" if "avx2" in R.cpu_flags() else "native")
    assert R.default_cpu_isa("smoke", "cpu") == "native" and R.default_cpu_isa("quick", "cuda") == "native"
    monkeypatch.setenv(R.CPU_ISA_ENV, "native")
    assert R.default_cpu_isa("quick", "cpu") == "native"


def test_records_name_the_cpu_and_the_pin():
    rec = R.cpu_record()
    assert rec["cpu_capability"] and rec["cpu_model"] and set(rec["cpu_isa_env"]) >= {"ATEN_CPU_CAPABILITY", "MKL_CBWR"}


LATE = """
import json, os, warnings, torch
from rtlkit.core.runtime import pin_cpu_isa_if_possible
if os.environ.get("MATHS_FIRST"):
    torch.randn(4096).exp().sum()          # CPU maths before the notebook's report.start
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    mode = pin_cpu_isa_if_possible("avx2")
print(json.dumps({"mode": mode, "cap": torch.backends.cpu.get_cpu_capability(), "warned": len(w),
                  "env": {k: os.environ.get(k) for k in ("RTLKIT_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}}))
"""


@needs_avx2
@pytest.mark.parametrize("maths_first", [False, True])
def test_a_kernel_is_pinned_only_if_the_pin_takes_and_is_never_left_half_pinned(maths_first):
    env = {k: v for k, v in os.environ.items() if k not in LIB_VARS}
    env.update(PYTHONPATH=str(REPO), **({"MATHS_FIRST": "1"} if maths_first else {}))
    p = subprocess.run([sys.executable, "-c", LATE], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if maths_first and r["cap"] != "AVX2":   # ATen's level was fixed already: everything put back, and said so
        assert r["mode"] == "native" and r["warned"] == 1
        assert r["env"] == {"RTLKIT_CPU_ISA": None, "ONEDNN_MAX_CPU_ISA": None, "MKL_CBWR": None}
    else:
        assert r["mode"] == "avx2" and r["cap"] == "AVX2" and r["warned"] == 0
        assert r["env"] == {"RTLKIT_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
