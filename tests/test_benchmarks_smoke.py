"""The benchmark scripts still run (tiny sizes, no timing assertions, nothing written)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RUN_ALL = BENCHMARKS / "run_all.py"
OUTPUTS = ["RESULTS.md", "RESULTS-quick.md", "results.png", "results-quick.png"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_benchmark_suite_smoke_run() -> None:
    """``run_all.py --smoke``: the overhead and batch benchmarks end to end (~25 s).

    The transfer and Music.AI benchmarks have tiny runs of their own below.
    """
    before = _stamps()
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
    assert "| target | verdict |" in done.stdout
    assert "`musicai-sdk`" in done.stdout  # the pointer under the peers table
    # --smoke writes nothing: no results file or plot is created or changed.
    assert _stamps() == before


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_transfer_benchmark_smoke_run(tmp_path: pathlib.Path) -> None:
    """``bench_transfer.py``: 4 MiB up and down, one repetition, no ``--write`` (~5 s)."""
    before = _stamps()
    done = _run("bench_transfer.py", "--quick", "--size-mib", "4", "--reps", "1", "--tmp", tmp_path)
    assert "Transfer of 4 MiB" in done.stdout
    assert "| upload | audioshake-async |" in done.stdout
    assert "| download | audioshake-async |" in done.stdout
    assert "Targets: upload: peak RSS < 100 MiB" in done.stdout
    assert _stamps() == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_s3_benchmark_smoke_run() -> None:
    """``bench_s3.py``: 6 items each way at 60 req/s, a 16 MiB output to disk and to S3
    (~35 s: two emulators, moto's server and six processes start)."""
    before = _stamps()
    done = _run("bench_s3.py", "--quick", "--items", "6", "--size-mib", "16", timeout=110)
    assert "| local files (upload) |" in done.stdout
    assert "| s3:// (presigned URL) | " in done.stdout
    assert "API requests per item with s3:// inputs" in done.stdout
    assert "| S3 (`write_output` into `S3Sink`) |" in done.stdout
    assert _stamps() == before


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_musicai_benchmark_smoke_run(tmp_path: pathlib.Path) -> None:
    """``bench_musicai.py``: 3 jobs and a 4 MiB upload per contender, once (~10 s)."""
    pytest.importorskip("musicai_sdk")
    pytest.importorskip("trustme")
    before = _stamps()
    figures = tmp_path / "musicai.json"
    done = _run(
        "bench_musicai.py",
        *("--quick", "--jobs", "3", "--size-mib", "4", "--reps", "1"),
        *("--tmp", tmp_path, "--json", figures),
    )
    assert "| musicai-sdk 1.0.4, as shipped (one job after another) |" in done.stdout
    assert "Upload of one 4 MiB file" in done.stdout
    data = json.loads(figures.read_text())
    assert data["jobs"] == 3 and data["quick"] is True
    assert set(data["jobs_per_s"]) >= {"sdk", "ours", "client"}
    assert data["rss_verdict"] in ("met", "MISSED")
    assert _stamps() == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_shared_limit_benchmark_smoke_run(tmp_path: pathlib.Path) -> None:
    """``bench_shared_limit.py``: 1 and 2 workers, 1 s per run, its own PostgreSQL (~25 s)."""
    pytest.importorskip("psycopg")
    before = _stamps()
    figures = tmp_path / "shared.json"
    done = _run(
        "bench_shared_limit.py",
        *("--quick", "--workers", "1,2", "--seconds", "1", "--wide-jitter", "0"),
        *("--json", figures),
        timeout=110,
    )
    assert "## Shared rate budget" in done.stdout
    assert "| 2 | shared, jitter 0.02 s |" in done.stdout and "| 2 | control |" in done.stdout
    rows = json.loads(figures.read_text())
    assert {(r["workers"], r["mode"]) for r in rows} == {
        (w, m) for w in (1, 2) for m in ("shared", "control")
    }
    for row in rows:
        assert row["per_s"] > 0 and row["max_1s"] > 0
        # Statements to PostgreSQL only for the shared limiter, fewer than requests (blocks).
        assert (0 < row["round_trips_per_request"] < 1) == (row["mode"] == "shared")
    assert _stamps() == before


def _run(
    script: str, *argv: str | pathlib.Path, timeout: float = 55
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _stamps() -> dict[str, int | None]:
    return {name: _stamp(BENCHMARKS / name) for name in OUTPUTS}


def _stamp(path: pathlib.Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
