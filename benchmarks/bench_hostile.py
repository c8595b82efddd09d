"""Issue 15 figures: a hostile 300 MiB answer's memory cost, and webhook batches that never stall.

Two measurements, each side by side with a baseline in the same run:

- ``huge``: peak RSS (``VmHWM``, read in the child) of one ``client.tasks.get()`` whose answer
  is a valid 300 MiB JSON body sent chunked by a server in a third process. The library reads
  at most ``max_json_bytes`` (16 MiB) and raises ResponseParseError; the baseline is what the
  library did before, bare aiohttp ``await response.read()`` + ``json.loads``. Target: < 100 MiB.
- ``webhooks``: batches driven by webhook deliveries from the emulator (its own process) to
  the library's receiver (in the child), two targets per task, safety poll 180 s.
  ``stale``: 100 tasks, 30 % of ``GET /tasks/{id}`` answered with the creation snapshot
  (``--stale-rate 0.3``) against the same batch without stale reads: wall time, and the
  longest gap between reads of one task must stay far below the 180 s safety poll.
  ``reads``: 300 tasks: confirming reads per task (``GET /tasks/{id}`` + ``GET /tasks``, the
  emulator's counts) with coalescing (default ``hint_coalesce=1.0``) against
  ``hint_coalesce=0`` with single GETs (one read per delivery, as before). Target: <= 1.1.

    python benchmarks/bench_hostile.py --quick      # 64 MiB answer, 30 / 60 tasks
    python benchmarks/bench_hostile.py --write      # full sizes, update RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MIB,
    ROOT,
    command_line,
    emulator_process,
    machine_info,
    machine_line,
    make_catalog,
    peak_rss_mib,
    progress,
    results_file,
    run_child,
    write_section,
)

NAME = "hostile"
SAFETY_POLL = 180.0


# --------------------------------------------------------------------------- the huge answer


def serve_huge(size: int) -> None:
    """Child: an HTTP server whose every answer is ``size`` bytes of valid JSON, chunked."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        head, tail = b'{"id":"x","targets":[],"pad":"', b'"}'
        chunk = b"x" * MIB
        remaining = size - len(head) - len(tail)
        try:
            await response.write(head)
            while remaining > 0:
                await response.write(chunk[: min(remaining, MIB)])
                remaining -= MIB
            await response.write(tail)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"PORT={runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def huge_child(contender: str, url: str) -> None:
    """Child: one read of the huge answer; prints peak RSS and what happened."""

    async def library() -> str:
        from audioshake_async import AudioShake, RetryPolicy, errors

        async with AudioShake("k", url, retry=RetryPolicy(max_retries=0)) as client:
            try:
                await client.tasks.get("abc")
            except errors.ResponseParseError as exc:
                return f"ResponseParseError: {exc}"
        return "parsed"

    async def bare() -> str:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(url + "/tasks/abc") as r:
            body = await r.read()
            data = json.loads(body)
        return f"parsed {len(body) // MIB} MiB ({type(data).__name__})"

    started = time.perf_counter()
    outcome = asyncio.run(library() if contender == "library" else bare())
    print(
        json.dumps(
            {
                "outcome": outcome,
                "peak_rss_mib": peak_rss_mib(),
                "seconds": time.perf_counter() - started,
            }
        )
    )


def measure_huge(size: int) -> dict[str, dict[str, Any]]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-huge", str(size)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip().partition("=")[2]
        url = f"http://127.0.0.1:{port}"
        results = {}
        for contender in ("library", "bare aiohttp read() + json.loads (before)"):
            key = "library" if contender == "library" else "bare"
            progress(f"huge answer: {contender}")
            record = run_child([__file__, "--huge-child", key, url], timeout=600)
            record.pop("stderr", None)
            results[contender] = record
        return results
    finally:
        server.terminate()
        server.wait(30)


# --------------------------------------------------------------------------- webhook batches


def webhook_child(
    listing: str, out: str, coalesce: float, list_refresh: bool, base_url: str, key: str
) -> None:
    """Child: a webhook-driven batch; prints wall time, results and the longest read gap."""
    import collections

    from audioshake_async import AudioShake, PollPolicy, Target
    from audioshake_async.webhooks import WebhookReceiver

    inputs = [line.strip() for line in Path(listing).read_text().splitlines() if line.strip()]
    targets = [Target("vocals", ["wav"]), Target("instrumental", ["wav"])]

    async def main() -> dict[str, Any]:
        receiver = WebhookReceiver()
        async with (
            receiver.serve("127.0.0.1", 0),
            AudioShake(
                key,
                base_url,
                rate_limit=1_000_000,
                poll=PollPolicy(initial_interval=SAFETY_POLL, max_interval=SAFETY_POLL),
            ) as client,
        ):
            hook = await client.webhooks.register(receiver.url)
            reads: dict[str, list[float]] = collections.defaultdict(list)
            original = client.tasks.get

            async def timed_get(task_id: str) -> Any:
                reads[task_id].append(time.monotonic())
                return await original(task_id)

            client.tasks.get = timed_get  # type: ignore[method-assign]
            started = time.perf_counter()
            ok = 0
            async for result in client.batch(
                inputs,
                targets=targets,
                out_dir=out,
                webhooks=receiver,
                safety_poll=SAFETY_POLL,
                hint_coalesce=coalesce,
                list_refresh=list_refresh,
                upload_concurrency=16,
                download_concurrency=16,
            ):
                ok += result.ok
            wall = time.perf_counter() - started
            await client.webhooks.delete(hook.id)
            gaps = [b - a for times in reads.values() for a, b in itertools.pairwise(times)]
            return {
                "items": len(inputs),
                "ok": ok,
                "wall_seconds": wall,
                "longest_read_gap_seconds": max(gaps, default=0.0),
                "client_requests": client.request_counts,
                "accepted": receiver.stats.accepted,
            }

    print(json.dumps(asyncio.run(main())))


def measure_webhooks(
    count: int,
    *,
    stale_rate: float,
    coalesce: float,
    list_refresh: bool,
    tmp: Path,
    delay: float = 0.5,
) -> dict[str, Any]:
    catalog = tmp / f"catalog-{count}"
    listing = make_catalog(catalog, count)
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="out-"))
    knobs: dict[str, Any] = {"delay": delay, "jitter": delay, "rate_limit": None, "seed": 7}
    if stale_rate:
        knobs["stale_rate"] = stale_rate
    with emulator_process(**knobs) as emulator:
        record = run_child(
            [
                __file__,
                "--webhook-child",
                str(listing),
                str(out),
                str(coalesce),
                "1" if list_refresh else "0",
                emulator.base_url,
                emulator.api_key,
            ],
            timeout=1800,
        )
        served = emulator.stats()
    record.pop("stderr", None)
    requests = served.get("requests", {})
    reads = requests.get("GET /tasks/{id}", 0) + requests.get("GET /tasks", 0)
    record["emulator_reads"] = reads
    record["reads_per_task"] = reads / count
    record["stale_served"] = served.get("faults", {}).get("stale", 0)
    return record


# --------------------------------------------------------------------------- report


def render(data: dict[str, Any], args: argparse.Namespace, info: dict[str, str]) -> str:
    lines = [
        "## Hostile servers (issue 15)",
        "",
        f"`{command_line('benchmarks/bench_hostile.py', args.argv)}`",
        "",
        machine_line(info),
        "",
        f"### Peak RSS reading a {data['huge_mib']} MiB JSON answer (child process, VmHWM)",
        "",
        "| contender | peak RSS MiB | outcome |",
        "|---|---:|---|",
    ]
    for name, record in data["huge"].items():
        lines.append(f"| {name} | {record['peak_rss_mib']:.0f} | {record['outcome'][:90]} |")
    lines += [
        "",
        "Target: the library under 100 MiB (it stops at `max_json_bytes`, 16 MiB by default).",
        "",
        f"### Webhook batches (two targets per task, safety poll {SAFETY_POLL:g} s, emulator "
        "delay 0.5 s + jitter 0.5 s)",
        "",
        "| batch | tasks | done | wall s | longest gap between reads of a task, s | "
        "reads per task (emulator) | stale answers served |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, record in data["webhooks"].items():
        lines.append(
            f"| {name} | {record['items']} | {record['ok']} | {record['wall_seconds']:.1f} | "
            f"{record['longest_read_gap_seconds']:.1f} | {record['reads_per_task']:.2f} | "
            f"{record['stale_served']} |"
        )
    lines += [
        "",
        "Targets: the stale batch never waits the safety poll (its longest gap stays far below "
        f"{SAFETY_POLL:g} s; before the fix 100 tasks took 187 s); the coalesced batch at most "
        "1.1 confirming reads per task (reads = `GET /tasks/{id}` + `GET /tasks` pages, as "
        "counted by the emulator). Single GETs (`list_refresh=False`) are where stale answers "
        "happen (the emulator's list pages are never stale); `hint_coalesce=0` with single GETs "
        "is the former cost, one `GET /tasks/{id}` per delivery.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; print the table, and with ``--write`` update RESULTS.md."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--serve-huge"]:
        serve_huge(int(raw[1]))
        return 0
    if raw[:1] == ["--huge-child"]:
        huge_child(raw[1], raw[2])
        return 0
    if raw[:1] == ["--webhook-child"]:
        webhook_child(raw[1], raw[2], float(raw[3]), raw[4] == "1", raw[5], raw[6])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB answer, 30 / 60 tasks")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md")
    parser.add_argument("--tmp", type=Path, default=None, help="where catalogs and outputs go")
    args = parser.parse_args(raw)
    args.argv = raw
    info = machine_info()
    huge_mib = 64 if args.quick else 300
    stale_tasks, read_tasks = (30, 60) if args.quick else (100, 300)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-hostile-") as tmp_dir:
        tmp = Path(tmp_dir)
        data: dict[str, Any] = {"huge_mib": huge_mib, "huge": measure_huge(huge_mib * MIB)}
        webhooks: dict[str, Any] = {}
        for label, stale, coalesce, pages, count in (
            ("no stale reads, single GETs (baseline)", 0.0, 1.0, False, stale_tasks),
            ("30 % stale reads, single GETs", 0.3, 1.0, False, stale_tasks),
            ("default: coalesced, list pages", 0.0, 1.0, True, read_tasks),
            ("hint_coalesce=0, single GETs (one read per delivery)", 0.0, 0.0, False, read_tasks),
        ):
            progress(f"webhooks: {label}, {count} tasks")
            webhooks[label] = measure_webhooks(
                count, stale_rate=stale, coalesce=coalesce, list_refresh=pages, tmp=tmp
            )
        data["webhooks"] = webhooks
    text = render(data, args, info)
    print(text)
    print(json.dumps(data, indent=1), file=sys.stderr)
    if args.write or args.quick:
        write_section(NAME, text, results_file(args.quick))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    raise SystemExit(main())
