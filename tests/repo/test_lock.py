"""requirements.txt (the human-edited list) and requirements.lock (every package at an exact
version with its hashes, from `make lock`) agree: the same top-level packages, the same pins."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str | None]:
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.match(r"([A-Za-z0-9_.\-]+)\s*(?:==\s*([^\s;]+))?", line)
            out[norm(m.group(1))] = m.group(2)
    return out


def lock() -> dict[str, dict]:
    """name -> {"versions": {...}, "hashes": n, "direct": bool} from the lock's entries."""
    out: dict[str, dict] = {}
    entry = None
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            entry = out.setdefault(norm(m.group(1)), {"versions": set(), "hashes": 0, "direct": False})
            entry["versions"].add(m.group(2))
        elif entry is not None and "--hash=sha256:" in line:
            entry["hashes"] += 1
        elif entry is not None and re.search(r"(#\s+via\s+|#\s+)-r requirements\.txt", line):
            entry["direct"] = True
    return out


def test_every_requirement_is_locked_and_every_locked_top_level_package_is_required():
    req, lk = requirements(), lock()
    assert set(req) - set(lk) == set(), "in requirements.txt but not in the lock: run `make lock`"
    direct = {n for n, e in lk.items() if e["direct"]}
    assert direct == set(req), f"top-level in one and not the other: {sorted(direct ^ set(req))}; run `make lock`"


def test_pins_agree_and_every_locked_package_has_a_hash():
    req, lk = requirements(), lock()
    for name, pin in req.items():
        if pin is not None:
            assert lk[name]["versions"] == {pin}, f"{name}: requirements.txt pins {pin}, the lock has {lk[name]['versions']}"
    assert all(e["hashes"] >= 1 for e in lk.values()), [n for n, e in lk.items() if not e["hashes"]]
    assert "torch" in lk and "nvidia-cudnn-cu13" in lk   # transitive dependencies are locked too


def test_requirements_say_what_the_project_needs_not_where_it_is_served_from():
    assert "served from" not in (REPO / "requirements.txt").read_text()
