"""The service wing's layering (issue 27): its modules' imports form no circle, and the HTTP edge
(builder/service/http/) is imported only by the app that assembles it."""

import ast
import graphlib
from pathlib import Path

WING = Path(__file__).resolve().parents[1] / "builder" / "service"


def _imports(top_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in WING.rglob("*.py"):
        module = ".".join(path.relative_to(WING.parents[1]).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        graph[module] = {n.module for n in nodes if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("builder.service")}
    return graph


def test_the_wing_s_modules_import_no_circle():
    graphlib.TopologicalSorter(_imports(top_level_only=True)).prepare()  # raises CycleError naming the circle


def test_only_the_app_imports_the_http_edge():
    importers = {
        module
        for module, imported in _imports(top_level_only=False).items()
        if any(name.startswith("builder.service.http") for name in imported) and not module.startswith("builder.service.http")
    }
    assert importers == {"builder.service.app"}, importers
