"""Developer sessions: ``nox -s tests lint typecheck docs``; ``nox -s lowest`` runs the suite on
the lowest versions pyproject.toml allows; ``nox -s bench -- --quick`` to smoke-run."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]
#: Every version the classifiers name; ``nox -s tests-3.13`` picks one.
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=SUPPORTED)
def tests(session: nox.Session) -> None:
    """The whole test suite (loopback servers, the emulator, the CLI)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON, reuse_venv=False)
def lowest(session: nox.Session) -> None:
    """The whole suite on the lowest direct versions (``uv --resolution lowest-direct``).

    Proves the floors in pyproject.toml: cattrs 24.1, aiohttp 3.10.11, anyio 4.4, attrs 23.1,
    numpy 1.24, pytest-asyncio 0.25.1, moto 5.0.13, starlette 0.45.1 ... A fresh venv every
    time, so nothing newer lingers. Green, ResourceWarnings as errors included (the event loop
    pytest-asyncio < 1.4 leaves set is closed by tests/conftest.py). About 7 minutes on two
    cores, as long as the suite itself: CI (scripts/check) runs the floor-sensitive part.
    """
    session.install("uv")
    session.run(
        "uv", "pip", "install", "--python", session.virtualenv.location,
        "--resolution", "lowest-direct", "-e", ".[test]",
    )  # fmt: skip
    session.run("uv", "pip", "list", "--python", session.virtualenv.location, silent=False)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting of the package, tests, benchmarks, examples and scripts."""
    session.install("ruff")
    paths = ["audioshake_async", "tests", "benchmarks", "examples", "scripts", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test,dev]")
    session.run("mypy", "--strict", "audioshake_async")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The API reference (pdoc) into docs/api; any warning fails the session."""
    session.install("-e", ".[test,dev]")
    session.run("python", "scripts/build_docs.py", *(session.posargs or ["docs/api"]))


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks side by side (``-- --quick`` for a small smoke run)."""
    session.install("-e", ".[test,bench]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
