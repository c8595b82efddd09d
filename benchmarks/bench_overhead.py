"""Per-request client CPU cost: ``client.tasks.get()`` vs bare ``aiohttp`` ``get()`` + ``json()``.

Both contenders read the same completed task (two targets, signed links) from the emulator,
which runs in a process of its own, so only the client's own CPU is counted:
``time.process_time()`` of the contender process over the measured requests, after a warm-up
(connections open, caches filled). Concurrency 1 (one request after another) and 64 (64
coroutines sharing one session/client).

- ``lib``: ``AudioShake(...).tasks.get(id)``: URL and header building, rate limiter, retry
  loop, request counting, JSON decoding and the cattrs structuring into a ``Task``. The client's
  rate limiter is left *on* but set to 1 000 000 requests/s so it never waits: its bookkeeping
  is counted, its sleeping is not (the emulator's limit is off too).
- ``bare``: ``session.get(url, headers={"x-api-key": ...})``, a status check, ``response.json()``.

    python benchmarks/bench_overhead.py            # 5 repetitions x 6000 requests
    python benchmarks/bench_overhead.py --quick    # 1 repetition x 1000 requests
    python benchmarks/bench_overhead.py --profile  # pyinstrument profile of the lib runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    command_line,
    emulator_process,
    fmt,
    loadavg,
    machine_info,
    machine_line,
    peak_rss_mib,
    progress,
    results_file,
    run_child,
    write_section,
    write_tiny_wav,
)

TARGET_RATIO = 1.3
CONCURRENCIES = (1, 64)
LIB_RATE_LIMIT = 1_000_000.0


# --------------------------------------------------------------------------- contender process


async def _lib(args: argparse.Namespace) -> tuple[int, float, float]:
    from audioshake_async import AudioShake

    async with AudioShake(args.api_key, args.base_url, rate_limit=LIB_RATE_LIMIT) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                task = await client.tasks.get(args.task_id)
                assert task.is_done

        return await _measure(worker, args)


async def _bare(args: argparse.Namespace) -> tuple[int, float, float]:
    import aiohttp

    url = f"{args.base_url}/tasks/{args.task_id}"
    headers = {"x-api-key": args.api_key}
    async with aiohttp.ClientSession() as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.get(url, headers=headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")
                    body = await response.json()
                assert body["id"]

        return await _measure(worker, args)


async def _measure(worker: Any, args: argparse.Namespace) -> tuple[int, float, float]:
    concurrency = args.concurrency
    per_worker = max(1, args.requests // concurrency)
    warm = max(1, args.warmup // concurrency)
    await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled", interval=0.0005)
        profiler.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if profiler is not None:
        profiler.stop()
        sys.stderr.write(profiler.output_text(unicode=False, color=False, show_all=False))
    return per_worker * concurrency, cpu, wall


def run_contender(args: argparse.Namespace) -> None:
    # Imports before the clock, for both contenders alike.
    import aiohttp  # noqa: F401

    import audioshake_async  # noqa: F401

    func = _lib if args.contender == "lib" else _bare
    requests, cpu, wall = asyncio.run(func(args))
    print(
        json.dumps(
            {
                "requests": requests,
                "cpu_us": cpu / requests * 1e6,
                "req_per_s": requests / wall,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


# --------------------------------------------------------------------------- driver


async def _make_task(base_url: str, api_key: str) -> str:
    """One completed task with two targets (the shape every GET returns)."""
    from audioshake_async import AudioShake, Target

    with tempfile.TemporaryDirectory() as tmp:
        wav = write_tiny_wav(Path(tmp) / "song.wav")
        async with AudioShake(api_key, base_url) as client:
            asset = await client.assets.upload(wav)
            task = await client.tasks.create(
                asset_id=asset.id,
                targets=[Target("vocals", ["wav"]), Target("instrumental", ["wav"])],
            )
            done = await client.tasks.wait(task.id, timeout=60)
            assert done.succeeded, done
            return done.id


def measure(
    quick: bool,
    reps: int | None = None,
    requests: int | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Run every contender at every concurrency; return raw runs and the rendered table."""
    reps = reps or (1 if quick else 5)
    requests = requests or (1000 if quick else 6000)
    warmup = 200 if quick else 500
    runs: dict[str, list[dict[str, Any]]] = {}
    info = machine_info()
    with emulator_process(delay=0, rate_limit=None, seed=1) as emu:
        task_id = asyncio.run(_make_task(emu.base_url, emu.api_key))
        for rep in range(reps):
            for concurrency in CONCURRENCIES:
                # Alternate contenders inside each repetition so drift hits both alike.
                for contender in ("bare", "lib"):
                    argv = [
                        __file__,
                        "_run",
                        "--contender",
                        contender,
                        "--base-url",
                        emu.base_url,
                        "--api-key",
                        emu.api_key,
                        "--task-id",
                        task_id,
                        "--concurrency",
                        str(concurrency),
                        "--requests",
                        str(requests),
                        "--warmup",
                        str(warmup),
                    ]
                    if profile and contender == "lib":
                        argv.append("--profile")
                    record = run_child(argv, timeout=600)
                    if profile and record["stderr"]:
                        progress(f"--- profile c={concurrency} {contender}\n{record['stderr']}")
                    record.pop("stderr", None)
                    runs.setdefault(f"{contender}:{concurrency}", []).append(record)
                    progress(
                        f"overhead rep {rep + 1}/{reps} c={concurrency:<3} {contender:4} "
                        f"{record['cpu_us']:7.1f} CPU us/request "
                        f"{record['req_per_s']:8.0f} req/s"
                    )
    table = render(runs, reps, requests)
    return {
        "runs": runs,
        "reps": reps,
        "requests": requests,
        "table": table,
        "info": info,
        "end_load": loadavg(),
    }


def ratio_of(runs: dict[str, list[dict[str, Any]]], concurrency: int) -> float:
    """Median lib CPU per request over median bare CPU per request."""
    lib = statistics.median(r["cpu_us"] for r in runs[f"lib:{concurrency}"])
    bare = statistics.median(r["cpu_us"] for r in runs[f"bare:{concurrency}"])
    return lib / bare


def paired_ratios(runs: dict[str, list[dict[str, Any]]], concurrency: int) -> list[float]:
    """lib / bare within each repetition (the two ran back to back, under the same load)."""
    return [
        lib["cpu_us"] / bare["cpu_us"]
        for lib, bare in zip(runs[f"lib:{concurrency}"], runs[f"bare:{concurrency}"], strict=True)
    ]


def render(runs: dict[str, list[dict[str, Any]]], reps: int, requests: int) -> str:
    lines = [
        f"{requests} measured requests per run after a warm-up, {reps} run(s) per row; "
        "median (min–max). Client CPU = `time.process_time()` of the contender's own process "
        "(the emulator runs in another process).",
        "",
        "| concurrency | contender | client CPU µs/request | requests/s | peak RSS MiB "
        "| CPU vs bare (ratio of medians) | per-repetition ratios |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for concurrency in CONCURRENCIES:
        for contender in ("bare", "lib"):
            rows = runs[f"{contender}:{concurrency}"]
            name = "bare aiohttp get()+json()" if contender == "bare" else "client.tasks.get()"
            ratio = ratio_of(runs, concurrency) if contender == "lib" else 1.0
            paired = fmt(paired_ratios(runs, concurrency), 2) + "x" if contender == "lib" else ""
            lines.append(
                f"| {concurrency} | {name} | {fmt([r['cpu_us'] for r in rows])} "
                f"| {fmt([r['req_per_s'] for r in rows])} "
                f"| {fmt([r['peak_rss_mib'] for r in rows], 1)} | {ratio:.2f}x | {paired} |"
            )
        ratio = ratio_of(runs, concurrency)
        verdicts.append(
            f"concurrency {concurrency}: {ratio:.2f}x "
            f"({'met' if ratio <= TARGET_RATIO else 'MISSED'})"
        )
    lines += [
        "",
        f"Target: client CPU per request at most {TARGET_RATIO}x bare aiohttp. "
        + "; ".join(verdicts)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def section(result: dict[str, Any], argv: list[str], via: str | None = None) -> str:
    command = f"`{command_line('benchmarks/bench_overhead.py', argv)}`"
    if via:
        command = f"`{via}` (this section alone: {command})"
    return (
        "## Per-request overhead: `client.tasks.get()` vs bare aiohttp\n\n"
        f"{machine_line(result['info'], result['end_load'])}\n"
        f"Command: {command}\n\n"
        "The library runs with its models, cattrs converter, retry loop, request counting and "
        f"rate limiter; the limiter is set to {LIB_RATE_LIMIT:,.0f} requests/s so it never "
        "waits (its bookkeeping is counted), and the emulator's own limit is off.\n\n"
        + result["table"]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_run":
        parser = argparse.ArgumentParser()
        for name in ("--contender", "--base-url", "--api-key", "--task-id"):
            parser.add_argument(name, required=True)
        for name in ("--concurrency", "--requests", "--warmup"):
            parser.add_argument(name, type=int, required=True)
        parser.add_argument("--profile", action="store_true")
        run_contender(parser.parse_args(argv[1:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 1000 requests")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument(
        "--write", action="store_true", help="update RESULTS.md (RESULTS-quick.md if --quick)"
    )
    parser.add_argument("--profile", action="store_true", help="pyinstrument the lib runs")
    args = parser.parse_args(argv)
    result = measure(args.quick, args.reps, args.requests, args.profile)
    print(result["table"])
    if args.write:
        write_section("overhead", section(result, argv), results_file(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
