"""The package's import graph has no circle, and the TP runtime (st_tp.runtime) imports nothing from the tooling
above it: each module can be read (and tested) from the bottom up, and the runtime can ship beside a saved model."""

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "st_tp"


def _module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _type_checking_nodes(tree) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (annotations only: such imports never run)."""
    skipped = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None  # `if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:`
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def _imports(path, *, count_type_checking: bool = False, name: str | None = None) -> set[str]:
    """st_tp modules a file imports, relative imports resolved, wherever the import stands: at module level or inside a
    function (a lazy import closes a circle as soon as that function runs). Imports under `if TYPE_CHECKING:` count
    only with count_type_checking."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = set() if count_type_checking else _type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (module -> modules it imports), as a path that ends where it starts; None if none."""
    visiting, done = [], set()

    def visit(name):
        if name in done:
            return None
        if name in visiting:
            return visiting[visiting.index(name):] + [name]
        visiting.append(name)
        for dep in sorted(graph[name]):
            if found := visit(dep):
                return found
        visiting.pop()
        done.add(name)
        return None

    return next((found for name in sorted(graph) if (found := visit(name))), None)


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    circle = _circle(graph)
    assert circle is None, f"import circle: {' -> '.join(circle)}"
    assert "st_tp.runtime.forward" not in graph["st_tp.runtime.prefix_cache"]
    assert "st_tp.runtime.forward" not in graph["st_tp.runtime.packing"]


def test_a_lazy_relative_import_closes_a_circle_too(tmp_path):
    """The shape main had (config imported prompts inside a method, prompts imported config at the top): found."""
    (tmp_path / "config.py").write_text("from .pst import x\n\ndef check():\n    from .prompts import PROMPTS\n")
    (tmp_path / "prompts.py").write_text("from typing import TYPE_CHECKING\nfrom .config import check\n"
                                         "if TYPE_CHECKING:\n    from .runner import Runner\n")
    graph = {f"st_tp.runtime.{stem}": _imports(tmp_path / f"{stem}.py", name=f"st_tp.runtime.{stem}")
             for stem in ("config", "prompts")}
    assert "st_tp.runtime.runner" not in graph["st_tp.runtime.prompts"], "TYPE_CHECKING imports never run"
    graph = {name: deps & set(graph) for name, deps in graph.items()}
    assert _circle(graph) == ["st_tp.runtime.config", "st_tp.runtime.prompts", "st_tp.runtime.config"]


def test_runtime_imports_nothing_from_the_tooling():
    """Not even lazily, inside a function: the runtime is what a saved model needs, nothing more."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("st_tp.runtime"):
            outside = {m for m in _imports(path, count_type_checking=True) if not m.startswith("st_tp.runtime")}
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
