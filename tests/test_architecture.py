"""The import graph of the shipped packages: dependencies point one way, and no module imports
itself back through others (type-only and function-level imports count too: an import hidden
in a function or behind TYPE_CHECKING still ties the two modules together).

Layers, top to bottom: the composition root (`archmesh_realtime`: the CLI, the development
mode), the two applications (`gateway`, `notifier`: neither imports the other), what they
share (`shared`), and at the bottom the client package (`archmesh_client`, clients/python: the
contract both sides speak), which imports nothing of the server. A layer imports only the
layers below it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS: list[set[str]] = [
    {"archmesh_realtime"},
    {"gateway", "notifier"},
    {"shared"},
    {"archmesh_client"},
]
SOURCES = {  # where each package's source lives
    "archmesh_realtime": ROOT,
    "gateway": ROOT,
    "notifier": ROOT,
    "shared": ROOT,
    "archmesh_client": ROOT / "clients" / "python" / "src",
}


def _module_name(path: Path, source: Path) -> str:
    parts = list(path.relative_to(source).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package, source in SOURCES.items():
        for path in (source / package).rglob("*.py"):
            found[_module_name(path, source)] = path
    return found


def _imports(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """Every project module `path` imports, wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; otherwise the name's module.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: set(_imports(path, name, known)) for name, path in known.items()}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(index for index, layer in enumerate(LAYERS) if top in layer)


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) < _layer(module)
        or (_layer(target) == _layer(module) and target.split(".")[0] != module.split(".")[0])
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_graph_is_read() -> None:
    """The checks above see the real imports (a positive control)."""
    graph = _graph()
    assert "gateway.hub" in graph["gateway.app"]
    assert "shared.broker" in graph["gateway.app"]
    assert "gateway.app" in graph["archmesh_realtime.dev"]
    assert "archmesh_client.channels" in graph["archmesh_client.publisher"]
    assert {package for layer in LAYERS for package in layer} == set(SOURCES)
