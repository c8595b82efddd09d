"""Build the API reference from the docstrings with pdoc; any warning fails the build.

    python scripts/build_docs.py [OUT_DIR]      (default: docs/api, which is not committed)

pdoc reports a module it cannot import, a docstring link it cannot resolve and similar
problems as warnings; they are recorded here and turned into exit status 1, so CI and
``nox -s docs`` catch a broken reference.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import pdoc
import pdoc.render

#: The public surface, package by package (a package's ``__all__`` hides its submodules from
#: pdoc's walk, so each documented package is named).
MODULES = [
    "audioshake_async",
    "audioshake_async.errors",
    "audioshake_async.models",
    "audioshake_async.tasks",
    "audioshake_async.batch",
    "audioshake_async.webhooks",
    "audioshake_async.musicai",
    "audioshake_async.legacy",
    "audioshake_async.migrate",
    "audioshake_async.core.logs",
    "audioshake_async.emulator",
    "audioshake_async.emulator.legacy",
    "audioshake_async.emulator.musicai",
    "audioshake_async.cli",
]


def main(argv: list[str]) -> int:
    """Render every public module of the package into ``argv[0]`` (or ``docs/api``)."""
    out = pathlib.Path(argv[0] if argv else "docs/api")
    pdoc.render.configure(docformat="restructuredtext", search=True, show_source=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=out)
    problems = [w for w in caught if "pdoc" in w.filename or issubclass(w.category, UserWarning)]
    for warning in problems:
        print(f"docs: {warning.category.__name__}: {warning.message}", file=sys.stderr)
    pages = sorted(out.rglob("*.html"))
    warned = f", {len(problems)} warnings" if problems else ""
    print(f"docs: {len(pages)} pages in {out}{warned}")
    return 1 if problems or len(pages) < 10 else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
