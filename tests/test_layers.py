"""The import graph of ``src/lockgate``: no layer imports one above it, no module circles.

Layers, low to high (a module may import its own layer and those below):

0. ``errors``, ``config``, ``_log``, ``_urls``, ``metrics``, ``tracing``, ``tlsgen``,
   ``store`` — shared ground, no room
1. ``policy``, ``identity``, ``credentials``, ``audit``, ``quotas`` — the rooms that decide,
   limit and record
2. ``gateway`` — the engines (they use the rooms, never the control plane)
3. ``control`` — the control listener's routes (over the rooms and the CQL engine's
   dynamic roles: ``/v1/db-role`` is a door to them, and the Cosmos DB and Databricks
   profiles name their token prefix and poll task, which the control routes must match);
   ``alerts`` (notifiers following the audit trail and the rooms' health) sits here too,
   and ``console`` (the web console over the rooms)
4. ``server``, ``state``, ``supervisor``, ``readiness``, ``cli*``, ``_cli_state``, ``demo``,
   ``scaffold``, ``airflow``, ``__main__`` — what wires or uses the whole

``lockgate/__init__.py`` (only ``__version__``) is layer 0.

The graph is built from the source alone (``ast``): every ``import lockgate...`` and
``from ... import ...`` (relative ones resolved; ``from pkg import name`` counts as an
import of ``pkg.name`` when that is a module), at module level or inside functions (a
deferred import is still an import, and deferring one is the usual way to hide a circle).
Imports under ``if TYPE_CHECKING:`` are left out: they never run. A circle is a strongly
connected component of more than one module, or a module importing itself.

Known violations being fixed elsewhere are listed in ``ALLOWED_UPWARD`` and
``ALLOWED_CIRCLES``; an entry that no longer matches anything fails the test too, so the
lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "lockgate"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {"errors", "config", "_log", "_urls", "_files", "metrics", "tracing", "tlsgen", "store"}
    ),
    frozenset({"policy", "identity", "credentials", "audit", "quotas"}),
    frozenset({"gateway"}),
    frozenset({"control", "alerts", "console"}),
    frozenset({"server", "state", "supervisor", "readiness", "_cli_state", "demo"}),
)
# also layer 4: the rest of what wires or uses the whole; cli, cli_token, ... by prefix
TOP = frozenset({"scaffold", "airflow", "__main__", "_entry"})
TOP_PREFIXES = ("cli",)

# (importer, imported) edges known to point up a layer, each fixed by a change in flight.
ALLOWED_UPWARD: frozenset[tuple[str, str]] = frozenset()
# Module sets known to import each other in a circle; a circle found must lie inside one.
ALLOWED_CIRCLES: tuple[frozenset[str], ...] = ()

Graph = Mapping[str, frozenset[str]]


# -- building the graph --------------------------------------------------------------------
def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    out: dict[str, Path] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (``if TYPE_CHECKING:`` bodies skipped)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _owning_module(name: str, modules: Iterable[str]) -> str | None:
    """``name`` if it is a module, else the longest module prefix of it."""
    known = set(modules)
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in known:
            return candidate
    return None


def import_graph(src: Path = SRC) -> dict[str, frozenset[str]]:
    """Module → the package modules it imports."""
    files = module_files(src)
    graph: dict[str, frozenset[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = _resolve(module, is_package, node)
                # "from pkg import sub" imports the module pkg.sub when there is one
                names = [f"{base}.{alias.name}" for alias in node.names] or [base]
                names = [n if n in files else base for n in names]
            for name in names:
                if name == ROOT or name.startswith(ROOT + "."):
                    owner = _owning_module(name, files)
                    if owner is not None and owner != module:
                        targets.add(owner)
        graph[module] = frozenset(targets)
    return graph


# -- the two rules -------------------------------------------------------------------------
def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # lockgate/__init__.py
    room = parts[1]
    if room in TOP or room.startswith(TOP_PREFIXES):
        return len(LAYERS) - 1
    for index, rooms in enumerate(LAYERS):
        if room in rooms:
            return index
    raise AssertionError(f"{module}: {room!r} is in no layer; add it to LAYERS")


def upward_imports(graph: Graph, layer: Callable[[str], int] = layer_of) -> list[tuple[str, str]]:
    """Every (importer, imported) where the imported module sits in a higher layer."""
    return sorted(
        (src, dst) for src, dsts in graph.items() for dst in dsts if layer(dst) > layer(src)
    )


def import_circles(graph: Graph) -> list[list[str]]:
    """The strongly connected components that are circles (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    circles.append(sorted(component))
    return sorted(circles)


# -- the rules applied to lockgate --------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, frozenset[str]]:
    return import_graph()


def test_no_module_imports_a_higher_layer(graph: Graph) -> None:
    found = upward_imports(graph)
    unexpected = [edge for edge in found if edge not in ALLOWED_UPWARD]
    assert not unexpected, "imports of a higher layer:\n" + "\n".join(
        f"  {src} ({layer_of(src)}) -> {dst} ({layer_of(dst)})" for src, dst in unexpected
    )
    stale = sorted(ALLOWED_UPWARD - set(found))
    assert not stale, f"fixed, remove from ALLOWED_UPWARD: {stale}"


def test_no_import_circles(graph: Graph) -> None:
    circles = import_circles(graph)
    unexpected = [c for c in circles if not any(set(c) <= allowed for allowed in ALLOWED_CIRCLES)]
    assert not unexpected, "import circles:\n" + "\n".join(
        "  " + " <-> ".join(c) for c in unexpected
    )
    stale = [a for a in ALLOWED_CIRCLES if not any(set(c) <= a for c in circles)]
    assert not stale, f"fixed, remove from ALLOWED_CIRCLES: {stale}"


def test_every_room_has_a_layer(graph: Graph) -> None:
    for module in graph:
        layer_of(module)  # raises for a room nobody placed


# -- the checks can fail -------------------------------------------------------------------
def test_a_synthetic_upward_import_is_reported() -> None:
    graph = {
        "lockgate.identity.service": frozenset({"lockgate.control.app", "lockgate.config"}),
        "lockgate.control.app": frozenset({"lockgate.identity.service"}),
        "lockgate.config": frozenset(),
    }
    assert upward_imports(graph) == [("lockgate.identity.service", "lockgate.control.app")]


def test_a_synthetic_circle_is_reported() -> None:
    graph = {
        "lockgate.gateway.a": frozenset({"lockgate.gateway.b"}),
        "lockgate.gateway.b": frozenset({"lockgate.gateway.c"}),
        "lockgate.gateway.c": frozenset({"lockgate.gateway.a", "lockgate.errors"}),
        "lockgate.errors": frozenset(),
        "lockgate.gateway.d": frozenset({"lockgate.gateway.d"}),  # imports itself
    }
    assert import_circles(graph) == [
        ["lockgate.gateway.a", "lockgate.gateway.b", "lockgate.gateway.c"],
        ["lockgate.gateway.d"],
    ]
    assert (
        import_circles({"lockgate.x": frozenset({"lockgate.y"}), "lockgate.y": frozenset()}) == []
    )


def test_the_graph_sees_relative_deferred_and_not_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / ROOT / "gateway"
    pkg.mkdir(parents=True)
    (tmp_path / ROOT / "__init__.py").write_text("")
    (tmp_path / ROOT / "control.py").write_text("")
    (tmp_path / ROOT / "errors.py").write_text("")
    (pkg / "__init__.py").write_text("from . import engine\n")
    (pkg / "engine.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..errors import X\n"
        "if TYPE_CHECKING:\n    from lockgate import control\n"
        "def later():\n    import lockgate.gateway.other\n"
    )
    (pkg / "other.py").write_text("from lockgate.gateway import engine\n")
    graph = import_graph(tmp_path)
    assert graph["lockgate.gateway"] == {"lockgate.gateway.engine"}
    assert graph["lockgate.gateway.engine"] == {"lockgate.errors", "lockgate.gateway.other"}
    assert import_circles(graph) == [["lockgate.gateway.engine", "lockgate.gateway.other"]]
    assert upward_imports(graph) == []
