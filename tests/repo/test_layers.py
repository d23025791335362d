"""The layout is the design: rtlkit's layers as folders, each importing only from itself and the
layers below it (core < measure < train < runs < studies < suite < cli), with no import circle, no
private name taken from another module, and no import of rtlkit's own modules inside a function
(where one is needed, for a real cycle or a heavy optional dependency, its line says why with
"# cycle:" or "# optional:")."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "rtlkit"
LAYERS = ("core", "measure", "train", "runs", "studies", "suite", "cli")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = modules()


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def imports(module: str):
    """(imported module, name or None, inside a function, the source line) for each rtlkit import."""
    path = MODULES[module]
    text = path.read_text()
    tree, lines = ast.parse(text), text.splitlines()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in MODULES else (base, a.name) for a in node.names]
        n, in_function, type_only = node, False, False
        while n in parents:
            n = parents[n]
            in_function |= isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            type_only |= isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        for target, name in targets:
            if target.startswith("rtlkit") and target != "rtlkit" and not type_only:
                yield target, name, in_function, lines[node.lineno - 1]


def test_every_module_sits_in_a_layer():
    loose = [m for m in MODULES if m != "rtlkit" and layer(m) is None]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers_only(module):
    up = [(t, n) for t, n, _, _ in imports(module) if layer(module) is not None and (layer(t) or 0) > layer(module)]
    assert not up, f"{module} imports from a higher layer: {up}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_a_module(module):
    private = [(t, n) for t, n, _, _ in imports(module) if n and n.startswith("_") and t != module]
    assert not private, f"{module} takes private names of other modules: {private}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_import_without_its_reason(module):
    bare = [line.strip() for _, _, in_function, line in imports(module)
            if in_function and "# cycle:" not in line and "# optional:" not in line]
    assert not bare, f"{module} imports rtlkit inside a function without a reason: {bare}"


def test_no_import_circle():
    graph = {m: {t for t, _, in_function, _ in imports(m) if not in_function and t != m} for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_checks_see_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a core module that imports a suite module is caught."""
    fake = tmp_path / "rtlkit" / "core"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from rtlkit.suite import registry\nfrom rtlkit.runs.store import _lock\n")
    monkeypatch.setitem(MODULES, "rtlkit.core.bad", fake / "bad.py")
    with pytest.raises(AssertionError, match="higher layer"):
        test_imports_run_down_the_layers_only("rtlkit.core.bad")
    with pytest.raises(AssertionError, match="private names"):
        test_no_private_name_crosses_a_module("rtlkit.core.bad")
