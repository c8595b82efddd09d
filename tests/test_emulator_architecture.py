"""The emulator's shape: self-contained, acyclic, and made of modules a reader can hold.

The emulator is a second, independent reading of the vendor docs, so it must never import
the client library it checks. Its modules must not import each other in a circle (counting
imports under ``TYPE_CHECKING`` and inside functions: a circle there is still a knot to
untie when reading or moving code), and none may outgrow :data:`MAX_LINES`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

import pytest

import audioshake_async.emulator

PACKAGE = "audioshake_async.emulator"
LIBRARY = "audioshake_async"
ROOT = Path(audioshake_async.emulator.__file__).parent
MAX_LINES = 500


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    """Dotted name of the module at ``path`` (a package is named by its ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported_names(tree: ast.AST, module: str, is_package: bool, known: Set[str]) -> Iterator[str]:
    """Every absolute module name ``tree`` imports, wherever the import statement sits.

    ``from pkg import name`` imports the module ``pkg.name`` when that is one of ``known``,
    else ``pkg`` itself.
    """
    # The package a relative import of level 1 starts from.
    anchor = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = anchor.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield submodule if submodule in known else source


def with_parents(target: str, importer: str) -> Iterator[str]:
    """``target`` and the packages importing it runs first, except the importer's own."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate == importer or importer.startswith(f"{candidate}."):
            return
        yield candidate


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """``module -> what it imports``: modules of the package, ``"<outside> name"`` for the
    rest of the library (third-party and standard modules are left out)."""
    paths = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target in imported_names(tree, name, path.name == "__init__.py", paths.keys()):
            inside = target == package or target.startswith(f"{package}.")
            if target in paths:
                graph[name].update(t for t in with_parents(target, name) if t in paths)
            elif not inside and (target == LIBRARY or target.startswith(f"{LIBRARY}.")):
                graph[name].add(f"<outside> {target}")
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_emulator_imports_nothing_of_the_library() -> None:
    """Not the client, not the protocol helpers: the emulator must disagree on its own."""
    outside = {
        module: sorted(t.removeprefix("<outside> ") for t in targets if t.startswith("<outside>"))
        for module, targets in import_graph().items()
    }
    assert {m: t for m, t in outside.items() if t} == {}


def test_no_import_cycles_between_emulator_modules() -> None:
    """Counting imports under ``TYPE_CHECKING`` and inside functions."""
    assert find_cycles(import_graph()) == []


def test_no_emulator_module_is_over_the_line_cap() -> None:
    """Past the cap a module is doing more than one job: split it by concern."""
    lengths = {
        module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")
    }
    assert {m: n for m, n in lengths.items() if n > MAX_LINES} == {}


#: Import paths the rest of the code base, the docs, benchmarks and examples rely on.
PUBLIC_NAMES = {
    "audioshake_async.emulator": ("Emulator", "EmulatorConfig", "knob_names"),
    "audioshake_async.emulator.testing": ("upload_file", "wait_until", "write_wav"),
    "audioshake_async.emulator.cli": ("build_parser", "main"),
    "audioshake_async.emulator.state": (
        "Asset",
        "Store",
        "billed_minutes",
        "format_minutes",
        "iso_timestamp",
    ),
    "audioshake_async.emulator.musicai": (
        "DEFAULT_WORKFLOWS",
        "MusicAIEmulator",
        "MusicAIWorkflow",
        "main",
    ),
    "audioshake_async.emulator.legacy": ("LegacyEmulator", "LegacyEmulatorConfig"),
    "audioshake_async.emulator.catalog": ("CATALOG",),
    "audioshake_async.emulator.app": ("is_loopback",),
    "audioshake_async.emulator.dsp": ("DspError", "read_audio", "separate", "write_audio"),
    "audioshake_async.emulator.plugin": (),
    "audioshake_async.emulator.__main__": None,
    "audioshake_async.emulator.musicai.__main__": None,
}


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
def test_public_import_paths_keep_working(module: str) -> None:
    """Moving code inside the emulator must not move these names."""
    if PUBLIC_NAMES[module] is None:  # a __main__: importing it would run it
        assert importlib.util.find_spec(module) is not None
        return
    imported = importlib.import_module(module)
    assert [n for n in PUBLIC_NAMES[module] or () if not hasattr(imported, n)] == []


def write_package(root: Path, files: Mapping[str, str]) -> None:
    """Write ``{relative path: source}`` under ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("files", "cycles"),
    [
        ({"__init__.py": "", "a.py": "from .b import x\n", "b.py": "x = 1\n"}, []),
        (
            {
                "__init__.py": "",
                "a.py": "from .b import x\n",
                "b.py": "import typing\nif typing.TYPE_CHECKING:\n    from .a import y\n",
            },
            [["pkg.a", "pkg.b"]],
        ),
        (
            {
                "__init__.py": "",
                "a.py": "def f():\n    from .sub import c\n",
                "sub/__init__.py": "from .. import a\n",
                "sub/c.py": "",
            },
            [["pkg.a", "pkg.sub"]],
        ),
    ],
)
def test_the_checker_sees_cycles_in_any_kind_of_import(
    tmp_path: Path, files: Mapping[str, str], cycles: list[list[str]]
) -> None:
    """The checker itself: cycles through TYPE_CHECKING, function-level and parent imports."""
    write_package(tmp_path, files)
    assert find_cycles(import_graph(tmp_path, "pkg")) == cycles


def test_the_checker_sees_imports_of_the_library(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from audioshake_async.emulator import x\nimport audioshake_async.client\n",
        },
    )
    edges = import_graph(tmp_path, PACKAGE)[f"{PACKAGE}.a"]
    assert {e for e in edges if e.startswith("<outside>")} == {"<outside> audioshake_async.client"}
