"""The rooms' rules, checked on the source (ast walks, no imports of the product).

Rooms: watchers/alerts/storage import only monitor.model of ours; inside monitor/ the sub-rooms point one
way (cli → run → {sim, market, discovery, output} → core → bundled); core/ is pure; only storage/ touches
SQL; no two modules import each other, however indirectly; only monitor/clock.py reads wall time.
"""

import ast
import re
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


# --- monitor/'s sub-rooms -----------------------------------------------------------------------------

# What each part of monitor/ may import of monitor/ (any room may import monitor.model; watchers, alerts
# and storage are checked above). Read top to bottom: nothing imports a part above it.
_BASE = {"monitor.model"}
SUBROOMS = {
    "monitor.model": set(),
    "monitor.clock": _BASE,
    "monitor.bundled": _BASE,
    "monitor.core": _BASE | {"monitor.core", "monitor.bundled"},
    "monitor.settings": set(),
    "monitor.config": _BASE | {"monitor.config", "monitor.core", "monitor.settings"},
    "monitor.config_schema": _BASE | {"monitor.config", "monitor.core", "monitor.settings"},
    "monitor.market": _BASE | {"monitor.market", "monitor.core", "monitor.bundled", "monitor.clock", "monitor.config"},
    "monitor.discovery": _BASE | {"monitor.discovery", "monitor.core", "monitor.bundled", "monitor.clock", "monitor.config"},
    # output shows what the others computed (the report's miner view is discovery.miners'); nothing imports output back
    "monitor.output": _BASE
    | {
        "monitor.output",
        "monitor.core",
        "monitor.bundled",
        "monitor.clock",
        "monitor.config",
        "monitor.discovery",
        "monitor.market",
    },
    "monitor.sim": _BASE | {"monitor.sim", "monitor.bundled", "monitor.clock"},
    "monitor.run": _BASE
    | {
        "monitor.run",
        "monitor.core",
        "monitor.bundled",
        "monitor.clock",
        "monitor.config",
        "monitor.market",
        "monitor.discovery",
        "monitor.output",
    },
    "monitor.cli": _BASE
    | {
        "monitor",
        "monitor.cli",
        "monitor.config_schema",
        "monitor.run",
        "monitor.core",
        "monitor.bundled",
        "monitor.clock",
        "monitor.config",
        "monitor.market",
        "monitor.discovery",
        "monitor.output",
        "monitor.sim",
    },
    "monitor.__main__": {"monitor.cli"},
}
# Rooms beside monitor/ each part may use (sim is a leaf the CLI's demo and the tests start; core uses none).
OTHER_ROOMS = {
    "monitor.core": set(),
    "monitor.bundled": {"watchers"},
    "monitor.sim": {"watchers"},
    "monitor.config": {"watchers", "alerts"},
    "monitor.config_schema": {"watchers", "alerts"},
}
# Modules and calls a pure function has no use for: I/O, the event loop, wall time, processes.
IMPURE = {
    "asyncio",
    "aiohttp",
    "socket",
    "sqlite3",
    "sqlite_utils",
    "subprocess",
    "os",
    "io",
    "pathlib",
    "shutil",
    "threading",
    "concurrent",
    "time",
    "urllib",
    "http",
    "web3",
    "requests",
    "tempfile",
    "logging",
    "importlib",
}
SQL = re.compile(
    r"\b(select\s+[\w*].*?\s+from\s|insert\s+(or\s+\w+\s+)?into\s|update\s+\w+\s+set\s|delete\s+from\s|"
    r"(create|drop)\s+(table|index)\s)",
    re.I | re.S,
)


def _name_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The sub-room of a monitor module: monitor.run.daemon → monitor.run; monitor.clock → itself."""
    parts = module.split(".")
    if parts[0] != "monitor" or len(parts) == 1:
        return module
    return ".".join(parts[:2])


def _all_imports(tree: ast.AST, module: str):
    """Every module named by an import (relative ones resolved), and `from m import name` as m.name too."""
    package = module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            yield node.lineno, base
            for a in node.names:
                yield node.lineno, f"{base}.{a.name}"


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _sub_violations(module: str, imported: str) -> str | None:
    top = imported.split(".")[0]
    if top not in ROOMS:
        return None
    part = _part(module)
    if top != "monitor":
        return None if top in OTHER_ROOMS.get(part, set(ROOMS)) else f"{module} imports {imported}"
    allowed = SUBROOMS.get(part)
    if allowed is None:
        return f"{module} is in no known part of monitor/ (add it to SUBROOMS)"
    target = _part(imported)
    if not _is_module(target):  # `from monitor import __version__`: a name of the package itself
        target = "monitor"
    return None if target in allowed or target == part else f"{module} imports {imported} ({part} → {target})"


def test_monitor_parts_point_down():
    bad = []
    for path in _modules("monitor"):
        module = _name_of(path)
        if module == "monitor" or module == "monitor.data":
            continue
        for line, imported in _all_imports(ast.parse(path.read_text()), module):
            why = _sub_violations(module, imported)
            if why:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {why}")
    assert not bad, "\n".join(sorted(set(bad)))


def _impurities(tree: ast.AST, module: str) -> list[str]:
    bad = []
    for line, imported in _all_imports(tree, module):
        top = imported.split(".")[0]
        if top in IMPURE or (top in ROOMS and _part(imported) not in SUBROOMS["monitor.core"]):
            bad.append(f"{line}: imports {imported}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncWith, ast.AsyncFor)):
            bad.append(f"{node.lineno}: async code")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"open", "input", "print"}:
            bad.append(f"{node.lineno}: calls {node.func.id}()")
    return sorted(set(bad))


def test_core_is_pure():
    bad = []
    paths = sorted((ROOT / "monitor" / "core").rglob("*.py"))
    assert len(paths) >= 8, "monitor/core/ holds the pure modules"
    for path in paths:
        bad += [f"{path.relative_to(ROOT)}:{b}" for b in _impurities(ast.parse(path.read_text()), _name_of(path))]
    assert not bad, "\n".join(bad)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _sql_uses(tree: ast.AST) -> list[str]:
    """Raw SQL outside storage: sqlite imports, the Store's private connection or query, SQL string literals."""
    bad = []
    docs = _docstring_nodes(tree)
    for line, imported in _our_imports(tree):
        if imported.split(".")[0] in {"sqlite3", "sqlite_utils"}:
            bad.append(f"{line}: imports {imported}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"_db", "_query"}:
            bad.append(f"{node.lineno}: uses the Store's private .{node.attr}")
        elif (
            isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.value, ast.Attribute) and node.value.attr == "db"
        ):
            bad.append(f"{node.lineno}: reaches into a database handle (.db)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and SQL.search(node.value):
            bad.append(f"{node.lineno}: SQL text {node.value[:40]!r}")
    return bad


def test_sql_only_in_storage():
    bad = []
    for room in ROOMS:
        if room == "storage":
            continue
        for path in _modules(room):
            bad += [f"{path.relative_to(ROOT)}:{b}" for b in _sql_uses(ast.parse(path.read_text()))]
    assert not bad, "\n".join(bad)


def test_store_has_no_public_sql_escape_hatch():
    tree = ast.parse((ROOT / "storage" / "store.py").read_text())
    store = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Store")
    public = {n.name for n in store.body if isinstance(n, ast.FunctionDef)}
    assert not public & {"query", "execute", "db"}
    assigned = {
        t.attr
        for n in ast.walk(store)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }
    assert "db" not in assigned and "_db" in assigned


def _import_graph() -> dict[str, set[str]]:
    modules = {_name_of(p): p for room in ROOMS for p in _modules(room)}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = {resolve(m) for _, m in _all_imports(ast.parse(path.read_text()), name) if m.split(".")[0] in ROOMS}
        # a package's __init__ is where its modules live, not a dependency of them
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycle():
    cycles = _cycles(_import_graph())
    assert not cycles, "modules that import each other (however indirectly): " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_the_structure_checks_can_fail():
    # each rule above recognises a violation when it sees one
    assert _sub_violations("monitor.core.classify", "monitor.run.pipeline")
    assert _sub_violations("monitor.discovery.miners", "monitor.run.runtime")
    assert _sub_violations("monitor.core.flows", "storage.store")
    assert _sub_violations("monitor.sim.chain", "monitor.cli.demo")
    assert not _sub_violations("monitor.run.daemon", "monitor.output.digest")
    assert not _sub_violations("monitor.cli.main", "monitor.sim.scenario")
    pure = "import asyncio\nfrom storage import Store\nasync def f():\n    await g()\nopen('x')\n"
    assert [b.split(":")[0] for b in _impurities(ast.parse(pure), "monitor.core.x")] == ["1", "2", "2", "3", "4", "5"]
    assert not _impurities(ast.parse("from monitor.core.facts import day_of\nimport statistics\n"), "monitor.core.x")
    sql = "import sqlite3\nstore.db['a']\nstore._query('x')\nq = 'select a from t where b = ?'\n"
    assert len(_sql_uses(ast.parse(sql))) == 4
    assert not _sql_uses(ast.parse('"""Select the newest rows from storage."""\nx = "select a channel"\n'))
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
