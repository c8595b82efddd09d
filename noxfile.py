"""Developer sessions: ``nox -s tests lint typecheck``; ``nox -s bench -- --quick`` to smoke-run."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (loopback servers, the emulator, the CLI)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting of the package, tests, benchmarks and examples."""
    session.install("ruff")
    paths = ["audioshake_async", "tests", "benchmarks", "examples", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test,dev]")
    session.run("mypy", "--strict", "audioshake_async")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks side by side (``-- --quick`` for a small smoke run)."""
    session.install("-e", ".[test,bench]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
