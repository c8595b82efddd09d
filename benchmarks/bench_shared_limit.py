"""One account budget for many worker processes: the shared PostgreSQL limiter vs N own limiters.

1, 2, 4 and 8 worker processes send cheap API requests (``client.models.list()``, i.e.
``GET /models``, through the real client) to one emulator enforcing the documented
60 requests/s (its token bucket: 60/s, a bucket of 60). In the same run, two contenders:

- ``shared``: every worker holds a :class:`PostgresRateLimiter` at 60/s on one account row;
- ``control``: every worker has its own in-process limiter at 60/s (today's behaviour of N
  ``audioshake-async`` processes), so N workers offer N x 60/s.

Each worker runs 16 requests at a time for the measured seconds, all workers starting
together. Figures: aggregate request starts per second (every attempt, retries included), the
most starts in any 1-second sliding window (request starts as each worker's aiohttp saw them,
on the machine's one ``CLOCK_MONOTONIC``), the emulator's 429 count, and PostgreSQL statements
per request. The benchmark starts its own PostgreSQL (``tests/_postgres.py``) and emulator.

    python benchmarks/bench_shared_limit.py --quick     # 3 s per run
    python benchmarks/bench_shared_limit.py             # 10 s per run
    python benchmarks/bench_shared_limit.py --write     # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
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
    progress,
    results_file,
    write_section,
)

RATE = 60.0
WORKERS = (1, 2, 4, 8)
CONCURRENCY = 16
TARGET_SHARE = 0.95


# --------------------------------------------------------------------------- one worker


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from audioshake_async import AudioShake, errors
    from audioshake_async.core.ratelimit_pg import PostgresRateLimiter

    starts: list[float] = []

    async def on_start(session: Any, ctx: Any, params: Any) -> None:
        starts.append(time.monotonic())

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    limiter = None
    if args.mode == "shared":
        limiter = PostgresRateLimiter(
            args.dsn, rate=args.rate, account=args.account, jitter=args.jitter
        )
        await limiter.open()
    failures = 0
    try:
        async with (
            aiohttp.ClientSession(trace_configs=[trace]) as session,
            AudioShake(
                args.api_key, args.base_url, session=session, rate_limit=limiter or RATE
            ) as client,
        ):
            print("READY", flush=True)
            go = await asyncio.to_thread(sys.stdin.readline)  # "GO <monotonic start>"
            end = float(go.split()[1]) + args.seconds

            async def sender() -> None:
                nonlocal failures
                while time.monotonic() < end:
                    try:
                        await client.models.list()
                    except errors.AudioShakeError:
                        failures += 1  # retries spent on 429s (the control)

            await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    finally:
        if limiter is not None:
            await limiter.aclose()
    return {
        "starts": starts,
        "failures": failures,
        "round_trips": limiter.round_trips if limiter else 0,
        "wasted": limiter.slots_wasted if limiter else 0,
    }


# --------------------------------------------------------------------------- one run


def _max_in_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - width:
            start += 1
        best = max(best, end - start + 1)
    return best


def _responses_429(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/_emulator/stats", timeout=60) as response:
        stats = json.load(response)
    return int(stats["responses"].get("429", 0))


def run_once(
    mode: str,
    workers: int,
    seconds: float,
    dsn: str,
    emulator: Any,
    account: str,
    extra: list[str],
) -> dict[str, Any]:
    """``workers`` processes of ``mode`` for ``seconds``, started together."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode]
    command += ["--dsn", dsn, "--account", account, "--seconds", str(seconds)]
    command += ["--base-url", emulator.base_url, "--api-key", emulator.api_key]
    command += extra
    before = _responses_429(emulator.base_url)
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"worker not ready: {line!r}")
        # A moment for the emulator's bucket to refill after the last run (it starts full).
        time.sleep(1.0)
        start = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"GO {start!r}\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 120)
            if proc.returncode != 0:
                raise RuntimeError(f"worker exited {proc.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    starts = [t for r in results for t in r["starts"] if start <= t < start + seconds]
    requests = sum(len(r["starts"]) for r in results)
    return {
        "mode": mode,
        "workers": workers,
        "seconds": seconds,
        "per_s": len(starts) / seconds,
        "max_1s": _max_in_window(starts),
        "r429": _responses_429(emulator.base_url) - before,
        "failures": sum(r["failures"] for r in results),
        "round_trips_per_request": sum(r["round_trips"] for r in results) / max(1, requests),
        "wasted": sum(r["wasted"] for r in results),
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests._postgres import running_postgres

    rows = []
    with running_postgres() as pg, emulator_process(rate_limit=RATE) as emulator:
        dsn = pg.new_database()
        plan = [(w, mode, args.jitter) for w in args.workers for mode in ("shared", "control")]
        if args.wide_jitter:
            # The most workers again with a wider jitter: fewer slots lost to stalls on an
            # overloaded machine, for a lower ceiling (rate / (1 + jitter)).
            plan.append((max(args.workers), "shared", args.wide_jitter))
        for workers, mode, jitter in plan:
            progress(f"{mode}: {workers} worker(s), {args.seconds:g} s, jitter {jitter:g} s")
            extra = ["--rate", str(args.rate), "--jitter", str(jitter)]
            account = f"run-{workers}-{jitter}"
            row = run_once(mode, workers, args.seconds, dsn, emulator, account, extra)
            row["jitter"] = jitter if mode == "shared" else None
            row["default"] = jitter == args.jitter
            progress(
                f"  {row['per_s']:.1f} req/s, max {row['max_1s']} in 1 s, "
                f"{row['r429']} x 429, {row['round_trips_per_request']:.3f} PG/request, "
                f"{row['wasted']} slots unused"
            )
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- rendering


def render(rows: list[dict[str, Any]], info: dict[str, str], argv: list[str], end: str) -> str:
    shared = [r for r in rows if r["mode"] == "shared" and r["default"]]
    rate_ok = all(r["per_s"] >= TARGET_SHARE * RATE for r in shared)
    cap_ok = all(r["max_1s"] <= RATE for r in shared)
    zero_ok = all(r["r429"] == 0 for r in shared)
    lines = [
        "## Shared rate budget: N worker processes, one account at 60 requests/s",
        "",
        machine_line(info, end),
        f"Command: `{command_line('benchmarks/bench_shared_limit.py', argv)}`. Each run: N "
        f"worker processes, {CONCURRENCY} `client.models.list()` calls at a time each, "
        f"{rows[0]['seconds']:g} s, all starting together, against one emulator enforcing "
        "60 requests/s (token bucket, bucket of 60). `shared`: one `PostgresRateLimiter` row "
        "for all; `control`: each worker its own in-process limiter at 60/s. Requests/s and "
        "the 1-second maximum count every attempt's start (retries included), as each "
        "worker's aiohttp saw it.",
        "",
        "| workers | limiter | requests/s | share of 60 | max in any 1 s | 429s "
        "| failed calls | PostgreSQL statements per request | slots given up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pg = f"{r['round_trips_per_request']:.3f}" if r["mode"] == "shared" else "—"
        label = r["mode"] if r["mode"] == "control" else f"shared, jitter {r['jitter']:g} s"
        lines.append(
            f"| {r['workers']} | {label} | {r['per_s']:.1f} | {r['per_s'] / RATE:.0%} "
            f"| {r['max_1s']} | {r['r429']} | {r['failures']} | {pg} "
            f"| {r['wasted'] if r['mode'] == 'shared' else '—'} |"
        )
    verdict = {True: "met", False: "MISSED"}
    lines += [
        "",
        f"Targets (shared): requests/s >= {TARGET_SHARE:.0%} of 60 {verdict[rate_ok]}; never "
        f"above 60 in any 1 s window {verdict[cap_ok]}; zero 429s {verdict[zero_ok]}.",
        "",
        "Reading: the shared limiter spaces slots `(1 + jitter) / 60` s apart on the database "
        "clock, so a request leaving up to `jitter` after its slot still keeps every 1-second "
        "window at 60: its ceiling is 60 / (1 + jitter), 58.8/s at the default 0.02 s. A request "
        "its process could not send within `jitter` of its slot (a stall: here N workers, the "
        "emulator, PostgreSQL and other engineers' test runs share 2 cores; see the load "
        'average) gives its slot up ("slots given up") rather than crowd the window; that, not '
        "the database, is the shortfall below the ceiling (it varies with the machine's load "
        "from run to run). A wider jitter trades ceiling for fewer slots given up. The "
        "control's 429s are the emulator refusing the N x 60/s that N independent limiters "
        "offer.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per run")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)))
    parser.add_argument("--write", action="store_true", help="update RESULTS(-quick).md")
    parser.add_argument("--json", default=None, help="also write the figures here")
    # A worker process (started by the benchmark itself).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--mode", "--dsn", "--account", "--base-url", "--api-key"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=RATE, help=argparse.SUPPRESS)
    parser.add_argument("--jitter", type=float, default=0.02, help="the shared limiter's")
    parser.add_argument("--wide-jitter", type=float, default=0.05, help="one more run (0: none)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.child:
        print(json.dumps(asyncio.run(_worker(args))), flush=True)
        return 0
    args.workers = [int(w) for w in args.workers.split(",")]
    info = machine_info()
    rows = measure(args)
    shown = list(argv)
    if "--json" in shown:  # a temporary path says nothing about the figures
        del shown[shown.index("--json") : shown.index("--json") + 2]
    text = render(rows, info, shown, loadavg())
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.write:
        write_section("shared", text, results_file(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
