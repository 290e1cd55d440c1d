"""The package's import graph has no circle, and the TP runtime (st_tp.runtime) imports nothing from the tooling
above it: each module can be read (and tested) from the bottom up, and the runtime can ship beside a saved model."""

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "st_tp"


def _module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path, *, module_level_only: bool) -> set[str]:
    """st_tp modules a file imports; relative imports resolved. With module_level_only, imports inside functions and
    `if TYPE_CHECKING:` do not count (they cannot make a circle at import time)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.startswith("st_tp"):
                found.add(module)
                found |= {f"{module}.{alias.name}" for alias in node.names}  # from st_tp.runtime import packing
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("st_tp")}
    return found


def _modules() -> dict:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(path, module_level_only=True) & set(modules) for name, path in modules.items()}
    visiting, done = [], set()

    def visit(name):
        if name in done:
            return
        assert name not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        visiting.append(name)
        for dep in graph[name]:
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)
    assert "st_tp.runtime.forward" not in graph["st_tp.runtime.prefix_cache"]
    assert "st_tp.runtime.forward" not in graph["st_tp.runtime.packing"]


def test_runtime_imports_nothing_from_the_tooling():
    """Not even lazily, inside a function: the runtime is what a saved model needs, nothing more."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("st_tp.runtime"):
            outside = {m for m in _imports(path, module_level_only=False) if not m.startswith("st_tp.runtime")}
            assert not outside, f"{name} imports tooling: {sorted(outside)}"


def test_runtime_modules_import_each_other_relatively():
    """So the runtime folder works as plain files beside a saved model, under any package name."""
    for path in (PACKAGE / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert not (node.module or "").startswith("st_tp"), f"{path.name}: absolute import of {node.module}"


def test_no_file_over_400_lines():
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines (at most 400)"
