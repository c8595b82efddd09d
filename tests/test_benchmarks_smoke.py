"""The benchmark scripts still run (tiny sizes, no timing assertions, nothing written)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_ALL = ROOT / "benchmarks" / "run_all.py"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_benchmark_suite_smoke_run() -> None:
    """``run_all.py --smoke``: the overhead and batch benchmarks end to end (~25 s).

    The transfer and Music.AI benchmarks have their own ``--quick`` modes; they are left out
    here to keep this under 40 s.
    """
    outputs = ["RESULTS.md", "RESULTS-quick.md", "results.png", "results-quick.png"]
    before = {name: _stamp(ROOT / "benchmarks" / name) for name in outputs}
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--smoke", "--only", "overhead,batch"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for heading in ("## Summary", "## Per-request overhead", "## Catalog batch", "## Peers"):
        assert heading in done.stdout
    assert "| client CPU per `tasks.get()`, concurrency 64 |" in done.stdout
    assert "naive: requests + 16 threads" in done.stdout
    # --smoke writes nothing: no results file or plot is created or changed.
    assert {name: _stamp(ROOT / "benchmarks" / name) for name in outputs} == before


def _stamp(path: pathlib.Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
