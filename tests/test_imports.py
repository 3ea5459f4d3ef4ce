"""The package's import graph has no cycle, between modules or between top-level packages.

Built from the source with ``ast`` (every import, at module level or inside a function, except
those under ``if TYPE_CHECKING:``), so a cycle that only shows at run time in one code path is
caught too. Top-level units are the subpackages and modules right under ``stseg_dist``
(``methods``, ``nuclei``, ``stages``...): ``nuclei`` may use ``imaging`` but never ``methods``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stseg_dist"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from a import b``: ``a.b`` where that is a
    module, else ``a``).
    """
    modules = _modules(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if is_pkg else name.rpartition(".")[0]
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                resolved = known(target) if target.startswith(root.name) else None
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def top_level_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    def unit(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(unit(a), set())
        for b in targets:
            if unit(a) != unit(b):
                out[unit(a)].add(unit(b))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its nodes, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_imports_it_must():
    """The graph is not empty by accident: known edges (relative, absolute, in a function) are in
    it.
    """
    graph = import_graph()
    assert "stseg_dist.stages" in graph["stseg_dist.driver"]  # from . import stages
    assert "stseg_dist.imaging.filters" in graph["stseg_dist.nuclei.classical"]
    assert "stseg_dist.methods.expansion" in graph["stseg_dist.methods"]  # inside _registry()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_top_level_packages():
    cycle = find_cycle(top_level_graph(import_graph()))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)
