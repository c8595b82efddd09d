"""The package's layers, read from its imports: arrows point down, no circles, no giant modules.

Every import counts, including those under ``TYPE_CHECKING`` and inside functions: a circle that
only type checkers see still ties two rooms together. See ARCHITECTURE.md for the map.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "audioshake_async"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

#: Rooms from the bottom up; a room may import its own modules and any room below it.
LAYERS: list[set[str]] = [
    {"errors", "_version"},
    {"_convert"},
    {"models"},
    {"core"},
    # Object stores (S3) for a batch's inputs and outputs: the output seam is in core.
    {"storage"},
    {"batch"},
    {"tasks", "musicai"},
    # The Jobs API's migration path produces Tasks API requests: legacy sits above tasks.
    {"legacy"},
    # The public face and the documented shims re-export the services.
    {"__init__", "webhooks", "migrate"},
    {"cli"},
    {"__main__"},
]
#: Services never import each other, except the way LAYERS states.
SIBLINGS_APART = {"tasks", "musicai"}
MAX_LINES = 500


def _room(module: str) -> str:
    """``audioshake_async.batch.engine`` -> ``batch``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every ``audioshake_async`` module ``path`` imports, resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(PACKAGE):
                continue
            # ``from . import errors`` imports the submodule, not a name of the package.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if _exists(candidate):
                    found.add(candidate)
                else:
                    found.add(target)
    return found


def _exists(module: str) -> bool:
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _layer_of(room: str) -> int:
    for index, rooms in enumerate(LAYERS):
        if room in rooms:
            return index
    raise AssertionError(f"room {room!r} is in no layer of the architecture test: place it")


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in graph.items():
        room = _room(module)
        if room == "emulator":
            continue
        for target in imported:
            other = _room(target)
            if other == room or (target == PACKAGE and room == "__init__"):
                continue
            if other == "emulator":
                # Only the CLI (the composition root) starts emulators.
                if room != "cli":
                    problems.append(f"{module} imports the emulator ({target})")
                continue
            if _layer_of(other) > _layer_of(room) or (
                room in SIBLINGS_APART and other in SIBLINGS_APART
            ):
                problems.append(f"{module} ({room}) imports upward: {target} ({other})")
    return problems


def _emulator_escapes(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} imports {target}"
        for module, imported in graph.items()
        if _room(module) == "emulator"
        for target in imported
        if _room(target) != "emulator"
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            # A package's __init__ re-exporting its own modules is not a circle of rooms.
            if target == node or node.startswith(target + "."):
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_layers_point_down() -> None:
    assert _upward_imports(_graph()) == []


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_the_emulator_imports_nothing_of_the_client() -> None:
    assert _emulator_escapes(_graph()) == []


def test_the_batch_engine_imports_no_service_and_no_cli() -> None:
    graph = _graph()
    leaks = [
        f"{module} imports {target}"
        for module, imported in graph.items()
        if _room(module) == "batch"
        for target in imported
        if _room(target) in {"tasks", "legacy", "musicai", "cli", "emulator", "webhooks"}
    ]
    assert leaks == []


def test_no_module_over_the_size_cap() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in ROOT.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize(
    ("graph", "check"),
    [
        # batch importing a service: upward.
        ({f"{PACKAGE}.batch.engine": {f"{PACKAGE}.tasks.client"}}, _upward_imports),
        # a service importing the CLI: upward.
        ({f"{PACKAGE}.musicai.provider": {f"{PACKAGE}.cli.parser"}}, _upward_imports),
        # two services importing each other sideways.
        ({f"{PACKAGE}.tasks.client": {f"{PACKAGE}.musicai.models"}}, _upward_imports),
        # library code starting an emulator.
        ({f"{PACKAGE}.legacy.client": {f"{PACKAGE}.emulator.legacy"}}, _upward_imports),
        # the emulator reaching into the client.
        ({f"{PACKAGE}.emulator.app": {f"{PACKAGE}.models"}}, _emulator_escapes),
    ],
)
def test_the_checks_catch_a_violation(graph: dict[str, set[str]], check: object) -> None:
    assert callable(check)
    assert check(graph) != []


def test_the_cycle_check_catches_a_circle() -> None:
    a, b = f"{PACKAGE}.core.a", f"{PACKAGE}.core.b"
    assert _cycles({a: {b}, b: {a}}) == [[a, b]]
    assert _cycles({a: {b}, b: set()}) == []
