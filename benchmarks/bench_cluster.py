"""Many workers, one catalog: N ``audioshake-async worker`` processes on a PostgreSQL journal.

1, 2, 4 and 8 worker processes process one submitted catalog against one emulator enforcing the
documented 60 requests/s. In the same run, two contenders per N:

- ``shared``: the workers' default, one rate budget for the account kept in PostgreSQL
  (``PostgresRateLimiter``) and one listing reader for the batch;
- ``local``: ``--local-rate-limit``, each worker its own 60/s (N independent limiters).

Figures: wall time from the workers' start to the last exit, items/s, API requests/s as the
emulator counted them (every route but its own introspection), 429s the emulator sent, API
requests per item, and PostgreSQL round trips per item (journal + rate budget). The benchmark
starts its own PostgreSQL (``tests/_postgres.py``) and emulator.

    python benchmarks/bench_cluster.py --quick      # 40 items, 1 and 2 workers
    python benchmarks/bench_cluster.py --write      # 300 items, 1/2/4/8 workers, RESULTS.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # tests/_postgres.py starts the PostgreSQL server

from _common import (  # noqa: E402
    command_line,
    emulator_process,
    loadavg,
    machine_info,
    machine_line,
    make_catalog,
    progress,
    results_file,
    write_section,
)

RATE = 60.0
WORKERS = (1, 2, 4, 8)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "audioshake_async", *args]


def _api_requests(stats: dict[str, Any]) -> int:
    return sum(n for route, n in stats["requests"].items() if "_emulator" not in route)


def run_once(
    server: Any, emulator: Any, catalog: Path, out: Path, workers: int, mode: str
) -> dict[str, Any]:
    """Submit the catalog as a new batch in a fresh database, run the workers, measure."""
    dsn = server.new_database()
    common = ["--journal", dsn, "--batch", "bench"]
    service = ["--api-key", emulator.api_key, "--base-url", emulator.base_url]
    subprocess.run(
        _cli("submit", str(catalog), "-m", "vocals", "-o", str(out), *common, *service),
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    before = emulator.stats()
    extra = ["--local-rate-limit"] if mode == "local" else []
    started = time.perf_counter()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        # The emulator's own count once a second: the steady rate and the busiest second.
        while not stop.wait(1.0):
            samples.append((time.perf_counter(), _api_requests(emulator.stats())))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    processes = [
        subprocess.Popen(
            _cli("worker", *common, *service, "--quiet", "--json", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(workers)
    ]
    summaries = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise RuntimeError(f"worker exited {process.returncode}: {stderr[-3000:]}")
        summaries.append(json.loads(stdout))
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    after = emulator.stats()
    rates = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(samples)]
    # The middle of the run: workers started, the last tasks not yet draining.
    middle = rates[len(rates) // 5 : max(len(rates) // 5 + 1, len(rates) * 4 // 5)]
    items = sum(s["done"] for s in summaries)
    requests = _api_requests(after) - _api_requests(before)
    rejected = after["faults"]["rate_limited"] - before["faults"]["rate_limited"]
    round_trips = sum(s["journal_round_trips"] + s["rate_budget_round_trips"] for s in summaries)
    flows = [s.get("flow") or {} for s in summaries]
    done = sorted(int(s["done"]) for s in summaries)
    return {
        "workers": workers,
        "mode": mode,
        "items": items,
        "wall": wall,
        "items_per_s": items / wall,
        "requests_per_s": requests / wall,
        "steady_per_s": statistics.median(middle) if middle else float("nan"),
        "busiest_s": max(rates) if rates else float("nan"),
        "requests_per_item": requests / max(1, items),
        "r429": rejected,
        "pg_per_item": round_trips / max(1, items),
        "tasks_created": after["tasks_created"] - before["tasks_created"],
        # How the workers divided the work and the budget among them.
        "done_min": done[0],
        "done_max": done[-1],
        "peak_windows": sorted(int(f.get("peak_window", 0)) for f in flows),
        "planned_rates": sorted(float(f.get("rate_per_s", 0.0)) for f in flows),
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests._postgres import running_postgres

    rows = []
    with tempfile.TemporaryDirectory() as scratch, running_postgres() as server:
        # One directory of hard links to one tiny WAV (its listing file is not an input).
        catalog = make_catalog(Path(scratch) / "catalog", args.items).parent / "0000"
        with emulator_process(rate_limit=RATE, delay=args.delay) as emulator:
            for workers in args.workers:
                for mode in ("shared", "local"):
                    out = Path(scratch) / f"out-{workers}-{mode}"
                    row = run_once(server, emulator, catalog, out, workers, mode)
                    progress(
                        f"{workers} worker(s), {mode}: {row['items_per_s']:.1f} items/s, "
                        f"{row['requests_per_s']:.1f} requests/s, {row['r429']} x 429"
                    )
                    rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], info: dict[str, str], argv: list[str], end: str) -> str:
    shared = [r for r in rows if r["mode"] == "shared"]
    share_ok = all(r["steady_per_s"] >= 0.95 * RATE for r in shared if r["workers"] > 1)
    zero_ok = all(r["r429"] == 0 for r in shared)
    once_ok = all(r["tasks_created"] == r["items"] for r in rows)
    lines = [
        "## Many workers on one PostgreSQL journal (issue 13)",
        "",
        machine_line(info, end),
        f"Command: `{command_line('benchmarks/bench_cluster.py', argv)}`. One catalog of "
        f"{rows[0]['items']} inputs submitted per run into a fresh database, then N "
        "`audioshake-async worker` processes against one emulator enforcing 60 requests/s "
        "(token bucket of 60) with tasks taking about "
        f"{argv_delay(argv)} s. `shared`: the default (one rate budget in PostgreSQL, one "
        "listing reader); `local`: `--local-rate-limit` (each worker its own 60/s).",
        "",
        "| workers | limiter | wall s | items/s | API requests/s, whole run | steady "
        "requests/s (share of 60) | busiest second | 429s | API requests per item "
        "| PostgreSQL round trips per item | tasks created | items per worker (min-max) "
        "| rate each planned on, at the end (req/s) | peak window per worker (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['mode']} | {r['wall']:.1f} | {r['items_per_s']:.2f} "
            f"| {r['requests_per_s']:.1f} | {r['steady_per_s']:.1f} "
            f"({r['steady_per_s'] / RATE:.0%}) | {r['busiest_s']:.0f} | {r['r429']} "
            f"| {r['requests_per_item']:.2f} | {r['pg_per_item']:.1f} | {r['tasks_created']} "
            f"| {r['done_min']}-{r['done_max']} | {_span(r['planned_rates'])} "
            f"| {max(r['peak_windows'], default=0)} |"
        )
    verdict = {True: "met", False: "MISSED"}
    lines += [
        "",
        f"Targets (shared): zero 429s {verdict[zero_ok]}; a steady rate of at least 95% of 60 "
        f"requests/s with several workers {verdict[share_ok]}; one task per input in every run "
        f"{verdict[once_ok]}.",
        "",
        "Reading: the whole-run rate includes the workers' start-up and the tail (the last "
        "tasks finishing, fewer requests due); the steady rate is the median of the emulator's "
        "per-second counts over the middle 60% of the run, the busiest second their maximum "
        "(sampled once a second, so a window straddling two samples can hide a little). One "
        "worker is bounded by its own pipeline, not by the budget. "
        "With `local` limiters, N workers offer N x 60/s: the emulator answers the excess with "
        "429s, which the client then waits out (Retry-After). PostgreSQL round trips per item "
        "count the journal (claim, writes, heartbeats) and the rate budget's reservations. "
        "With the shared budget each worker plans its window and polling on its share "
        "(60 / workers alive, from the limiter's membership beats): the rate it planned on at "
        "the end of its run is shown (a worker finishing while others still run counts them); "
        "with `local` limiters each plans on the whole 60.",
        "",
    ]
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def argv_delay(argv: list[str]) -> str:
    if "--delay" in argv:
        return argv[argv.index("--delay") + 1]
    return "1"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 items, 1 and 2 workers")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--workers", default=None)
    parser.add_argument("--delay", type=float, default=1.0, help="emulated processing seconds")
    parser.add_argument("--write", action="store_true", help="update RESULTS(-quick).md")
    args = parser.parse_args(argv)
    args.items = args.items or (40 if args.quick else 300)
    chosen = args.workers or ("1,2" if args.quick else "1,2,4,8")
    args.workers = [int(w) for w in chosen.split(",")]
    info = machine_info()
    rows = measure(args)
    text = render(rows, info, list(argv), loadavg())
    print(text)
    if args.write:
        write_section("cluster", text, results_file(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
