"""The package's shape, as the README's "Architecture" section describes it.

Read from the source with :mod:`ast` (nothing is imported): every import,
including those inside functions (lazy imports count), gives an arrow
between modules. The arrows must form no cycle; click and rich stay in
``bncli/cli/``; no engine imports the layer; no module imports another's
private (underscored) names, and neither do the tests; no file is longer
than 800 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bncli"
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue  # never run: a type checker's arrow, not an import
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names]))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target(module: str, name: str) -> str:
    """The bncli module an import names: ``from bncli.io import sources`` is one."""
    if f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names in _imports(path):
            for target in {_target(module, n) for n in names} or {module}:
                if target in MODULES and target != name:
                    graph[name].add(target)
    return graph


def test_the_parser_sees_lazy_imports():
    """A check of the checker: imports inside functions are arrows too."""
    assert "bncli.state" in _graph()["bncli.layer"]  # imported inside methods


def test_no_import_cycle_lazy_imports_included():
    graph = _graph()
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        if node in stack:
            cycle = [*stack[stack.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_over_800_lines(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines"


def test_click_and_rich_only_in_the_cli():
    outside = [
        (name, module)
        for name, path in MODULES.items()
        if not name.startswith("bncli.cli")
        for module, _ in _imports(path)
        if module.split(".")[0] in ("click", "rich")
    ]
    assert outside == []


def test_no_engine_imports_the_layer():
    graph = _graph()
    engines = [n for n in graph if n.startswith("bncli.engines")]
    assert engines
    assert [n for n in engines if "bncli.layer" in graph[n]] == []


def _private_imports(paths: list[Path]) -> list[str]:
    hits = []
    for path in paths:
        for module, names in _imports(path):
            if not module.startswith("bncli"):
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    hits.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    return hits


def test_no_module_imports_another_modules_private_names():
    assert _private_imports(list(MODULES.values())) == []


def _private_reach(path: Path) -> list[str]:
    """``module._name`` read or patched where ``module`` is a bncli module."""
    tree = ast.parse(path.read_text(), str(path))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bncli"):
            modules.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            modules.update(
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.startswith("bncli")
            )
    hits = []

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    def root(node: ast.expr) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if root(node.value) in modules and not isinstance(node.value, ast.Call):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setattr"
            and len(node.args) >= 2
            and root(node.args[0]) in modules
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
        ):
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.args[1].value}")
    return hits


TEST_FILES = sorted((ROOT / "tests").rglob("*.py")) + sorted(
    (ROOT / "benchmarks").rglob("*.py")
)


def test_tests_import_no_private_names():
    assert _private_imports(TEST_FILES) == []


def test_tests_reach_into_no_private_member_of_a_module():
    hits = [hit for path in TEST_FILES for hit in _private_reach(path)]
    assert hits == []


#: The package's layers, lowest first: a module imports only from layers
#: below its own (and from its own part of the package).
LAYERS = [
    {"version"},
    {"native"},
    {"bncli", "errors", "limits", "progress", "interrupts"},
    {"fast_moments"},
    {"kernels"},
    {"normalization"},
    {"io"},
    {"state", "keras_compat", "engines"},
    {"health", "drift"},
    {"layer"},
    {"parts"},
    {"workflows", "recalibrate"},
    {"cli"},
    {"__main__"},
]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bncli"


def test_imports_flow_one_way_down_the_layers():
    rank = {part: level for level, parts in enumerate(LAYERS) for part in parts}
    assert {_part(m) for m in MODULES} <= set(rank), "a new part: give it a layer"
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in _graph().items()
        for b in targets
        if _part(a) != _part(b) and rank[_part(b)] >= rank[_part(a)]
    )
    assert upward == []


#: Private members read on another object, each with its reason.
PRIVATE_REACH_ALLOWED = {
    # The standard library's way to leave a forked child at once.
    ("bncli/io/child.py", "os._exit"),
    # A classmethod filling in the instance it has just made.
    ("bncli/layer.py", "layer._gamma"),
    ("bncli/layer.py", "layer._beta"),
    ("bncli/layer.py", "layer._cast"),
}


def test_no_module_reaches_into_another_objects_private_members():
    found = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (
                    isinstance(node.value, ast.Name)
                    and node.value.id in ("self", "cls")
                )
            ):
                found.add((str(path.relative_to(ROOT)), ast.unparse(node)))
    assert found - PRIVATE_REACH_ALLOWED == set()
