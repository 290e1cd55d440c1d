"""The package's import graph has no circle: each module can be read (and tested) from the bottom up."""

import ast

from tests.conftest import ROOT


def _module_level_imports(path) -> set[str]:
    """st_tp modules imported at module level (imports inside functions and `if TYPE_CHECKING:` do not count)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("st_tp"):
            found.add(node.module)
            if node.module == "st_tp":  # from st_tp import packing, row_skipping
                found |= {f"st_tp.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("st_tp")}
    return found


def test_no_import_circle():
    package = ROOT / "st_tp"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {name: _module_level_imports(path) & set(modules) for name, path in modules.items()}
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
    assert "st_tp.forward" not in graph["st_tp.prefix_cache"] and "st_tp.forward" not in graph["st_tp.packing"]
