"""The rooms' rules, checked on the source: imports point one way, only clock.py reads wall time."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("monitor", "watchers", "alerts", "storage")
# What each room may import of ours: the rooms other than `monitor` get only the shared vocabulary.
ALLOWED = {
    "monitor": {"monitor", "watchers", "alerts", "storage"},
    "watchers": {"watchers", "monitor.model"},
    "alerts": {"alerts", "monitor.model"},
    "storage": {"storage", "monitor.model"},
}
WALL_CLOCK = {("time", "time"), ("time", "monotonic"), ("datetime", "now"), ("datetime", "utcnow"), ("date", "today")}


def _modules(room: str):
    return sorted((ROOT / room).rglob("*.py"))


def _our_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _allowed(room: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in ROOMS:
        return True
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[room])


@pytest.mark.parametrize("room", ROOMS)
def test_imports_point_one_way(room):
    bad = []
    for path in _modules(room):
        for line, module in _our_imports(ast.parse(path.read_text(), str(path))):
            if not _allowed(room, module):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_only_sqlite_utils_in_storage():
    bad = []
    for room in ROOMS:
        if room == "storage":
            continue
        for path in _modules(room):
            for line, module in _our_imports(ast.parse(path.read_text())):
                if module.split(".")[0] == "sqlite_utils":
                    bad.append(f"{path.relative_to(ROOT)}:{line}")
    assert not bad, bad


def test_no_wall_clock_outside_clock_module():
    bad = []
    for room in ROOMS:
        for path in _modules(room):
            if path == ROOT / "monitor" / "clock.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    base = node.func.value
                    name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
                    if (name, node.func.attr) in WALL_CLOCK:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}.{node.func.attr}()")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_violation(tmp_path):
    # the rules above must be able to fail: a forbidden import is recognised as such
    tree = ast.parse("from monitor.run.pipeline import Pipeline\nimport storage.store\n")
    mods = [m for _, m in _our_imports(tree)]
    assert not _allowed("watchers", mods[0]) and not _allowed("alerts", mods[1])
    assert _allowed("monitor", mods[0]) and _allowed("watchers", "monitor.model")
