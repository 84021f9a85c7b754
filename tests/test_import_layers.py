"""The package's modules import each other without cycles (lazy function-level imports included).

Imports under ``if TYPE_CHECKING:`` only serve annotations and are left out. A cycle means two modules
can only be understood together; DESIGN.md's layering (imageio/paths/plans at the bottom, then planners
and metrics, networks, inference, trainers, cli) has none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "vessel_seg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Modules named by import statements outside ``if TYPE_CHECKING:`` blocks."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            names.extend([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> nx.DiGraph:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if target in modules and target != "vessel_seg" and not name.startswith(target + "."):
                graph.add_edge(name, target)
    return graph


def test_no_import_cycles():
    cycles = [c for c in nx.simple_cycles(import_graph()) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_lower_layers_do_not_import_upper_ones():
    graph = import_graph()
    order = ["imageio", "planners", "networks", "inference", "trainers", "cli"]  # each may use those before it
    for source, target in graph.edges:
        layers = [source.split(".")[1] if "." in source else "", target.split(".")[1] if "." in target else ""]
        if all(layer in order for layer in layers):
            assert order.index(layers[0]) >= order.index(layers[1]), f"{source} imports {target} (an upper layer)"
