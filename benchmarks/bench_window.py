"""Keeping the account's budget full: the fixed in-flight window against the adaptive one.

At the documented 60 requests/s a catalog is bound by ``60 / (API requests per item)`` items/s;
by Little's law that bound needs ``items/s x time in flight`` tasks in flight. The baseline is
the engine as it was before the window work (``git archive`` of ``--baseline``, default
:data:`BASELINE_REF`): ``max_in_flight=1000``, 4 uploads, per-task poll backoff.
The contender is this tree with its defaults (window from Little's law, list sweeps on the
interval the 10% poll share allows, adaptive concurrency). Each pair runs side by side in one
invocation, each on a fresh emulator process (token bucket at 60/s, the client at 60/s).

Inputs: files (hard links to one tiny WAV: upload + create per item, bound ~30/s) and URLs
(served from loopback to the emulator: create only, bound ~60/s); one target (``vocals`` wav).

- ``30-60 s`` tasks: every input runs to its end; items/s is the creation rate over the middle
  half of the creations (the window has filled by then: a capped window holds creations to
  its completion rate), against the bound; the whole run's done/s is shown too;
- ``120-240 s`` tasks: the emulator has no time-scale knob and a steady state would take
  10,000+ inputs and tens of minutes per run, so each run is stopped after ``--long-seconds``
  (default 240) and items/s is the *creation* rate over the second half of the run: in steady
  state completions equal creations (Little's law), and the fixed window caps creations at
  ``1000 / time in flight`` once it is full;
- ``memory``: engine state per task in flight at 20,000 (an in-process provider whose tasks
  never finish, so only the engine is measured): tracemalloc and RSS growth / tasks.

    python benchmarks/bench_window.py --quick     # 3-6 s and 12-24 s tasks, small sizes
    python benchmarks/bench_window.py             # full (about 20 minutes)
    python benchmarks/bench_window.py --write     # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import (
    ROOT,
    command_line,
    emulator_process,
    loadavg,
    machine_info,
    machine_line,
    make_catalog,
    peak_rss_mib,
    progress,
    results_file,
    run_child,
    write_section,
    write_tiny_wav,
)

RATE = 60.0
POLL_ROUTES = ("GET /tasks", "GET /tasks/{id}")
CREATE_ROUTES = ("POST /assets", "POST /tasks")


# --------------------------------------------------------------------------- child


def _lines(listing: str) -> Iterator[str]:
    with open(listing) as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n")


async def _lib(args: argparse.Namespace) -> dict[str, Any]:
    from audioshake_async import AudioShake, Target
    from audioshake_async.batch import ItemDone, ItemFailed, TaskCreated

    flow_cls: Any = None
    with contextlib.suppress(ImportError):
        from audioshake_async.batch import FlowUpdate as flow_cls  # the contender only
    created: list[float] = []
    finished: list[float] = []
    last_flow: list[Any] = [None]
    peak = [0]
    started = time.perf_counter()

    def on_event(event: Any) -> None:
        now = time.perf_counter() - started
        if isinstance(event, TaskCreated):
            created.append(now)
            peak[0] = max(peak[0], len(created) - len(finished))
        elif isinstance(event, (ItemDone, ItemFailed)):
            finished.append(now)
        elif flow_cls is not None and isinstance(event, flow_cls):
            last_flow[0] = event

    failed = 0
    async with AudioShake(args.api_key, args.base_url, rate_limit=RATE) as client:
        batch = client.batch(
            _lines(args.inputs),
            targets=[Target("vocals", ["wav"])],
            out_dir=args.out,
            journal=pathlib.Path(args.out) / ".journal.sqlite",
            progress=on_event,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.deadline or None):
                async with contextlib.aclosing(batch) as results:  # type: ignore[type-var]
                    async for result in results:
                        failed += result.status == "failed"
        seconds = time.perf_counter() - started
        counts = dict(client.request_counts)
    flow = last_flow[0]
    return {
        "seconds": seconds,
        "created": created,
        "finished": finished,
        "failed": failed,
        "peak_in_flight": peak[0],
        "peak_window": None if flow is None else flow.peak_window,
        "processing_time": None if flow is None else flow.processing_time,
        "upload_concurrency": None if flow is None else flow.upload_concurrency,
        "requests": counts,
        "peak_rss_mib": peak_rss_mib(),
    }


def _memory(args: argparse.Namespace) -> dict[str, Any]:
    """Engine state per task at ``args.tasks`` in flight (in-process provider, no HTTP)."""
    import gc
    import tracemalloc

    from audioshake_async import Target
    from audioshake_async.batch import run_batch
    from audioshake_async.core.http import PollPolicy, RetryPolicy
    from audioshake_async.models import TargetResult, Task

    count = args.tasks
    reached = asyncio.Event()

    class Never:
        """Tasks that stay ``processing``: the engine holds every one of them."""

        name = "memory"
        poll = PollPolicy(initial_interval=5.0, max_interval=30.0)
        retry = RetryPolicy()
        source_lifetime = 72 * 3600.0
        supports_listing = True
        page_size = 100
        metadata_limit = 4096
        journal_namespace = "memory:"
        input_extensions = frozenset({".wav"})
        request_rate = 1e6  # the window is then the hard ceiling at once

        def __init__(self) -> None:
            self.made = 0

        def check_targets(self, targets: Any) -> tuple[Any, ...]:
            return tuple(targets)

        async def check_source(self, path: Any) -> int:
            return 1

        async def upload(self, path: Any, name: str, progress: Any) -> str:
            raise AssertionError("URL inputs only")

        async def find_upload(self, name: str) -> str | None:
            return None

        async def create(self, *, source: Any, url: Any, targets: Any, metadata: str) -> Task:
            self.made += 1
            if self.made >= count:
                reached.set()
            return Task(
                id=f"task-{self.made:08d}-{os.urandom(6).hex()}",
                targets=(
                    TargetResult(id=os.urandom(8).hex(), model="vocals", formats=("wav",)),
                    TargetResult(id=os.urandom(8).hex(), model="drums", formats=("wav",)),
                ),
                url=url,
                metadata=metadata,
            )

        async def get(self, task_id: str) -> Task:
            await asyncio.sleep(3600)  # never answers: only the engine's state is measured
            raise AssertionError

        async def page(self, *, skip: int, take: int) -> list[Task]:
            await asyncio.sleep(3600)
            raise AssertionError

        async def fetch_output(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("no outputs")

        def request_counts(self) -> dict[str, int]:
            return {}

    async def main() -> dict[str, Any]:
        urls = (f"https://cdn.example/catalog/track-{i:06d}.wav" for i in range(count))
        with tempfile.TemporaryDirectory() as out:
            gc.collect()
            rss0 = _rss_mib()
            if args.trace:
                tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            batch = run_batch(
                Never(),
                urls,
                targets=[Target("vocals", ["wav"]), Target("drums", ["wav"])],
                out_dir=out,
                journal=pathlib.Path(out) / "j.sqlite",
            )
            consumer = asyncio.ensure_future(anext(batch, None))
            await asyncio.wait_for(reached.wait(), 900)
            await asyncio.sleep(1.0)  # the last creates reach the watcher
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - base
            rss = _rss_mib() - rss0
            if args.trace:
                tracemalloc.stop()
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await consumer
            await batch.aclose()
        if args.trace:
            # RSS is measured in a run of its own: tracemalloc's bookkeeping inflates it.
            plain = run_child([__file__, "_memory", "--tasks", str(count), "--no-trace"])
            rss, peak = plain["rss_growth_mib"], plain["peak_rss_mib"]
        else:
            peak = peak_rss_mib()
        return {
            "tasks": count,
            "traced_kib_per_task": traced / 1024 / count,
            "rss_kib_per_task": rss * 1024 / count,
            "traced_mib": traced / 2**20,
            "rss_growth_mib": rss,
            "peak_rss_mib": peak,
        }

    return asyncio.run(main())


def _rss_mib() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- driver


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves the one tiny WAV at every path (each URL input is a distinct source)."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def url_server(wav: pathlib.Path) -> Iterator[str]:
    _Quiet.body = wav.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


#: The last commit with the fixed window and per-task backoff (before issue 17's work).
BASELINE_REF = "e29ab84"


def baseline_tree(ref: str, root: pathlib.Path) -> pathlib.Path:
    """The package as of ``ref`` (``git archive``), for the baseline child's PYTHONPATH."""
    target = root / "baseline"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, "audioshake_async"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def run_one(
    label: str,
    listing: pathlib.Path,
    *,
    emulator: dict[str, Any],
    deadline: float,
    package: pathlib.Path,
    scratch: pathlib.Path,
) -> dict[str, Any]:
    out = pathlib.Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    env = dict(os.environ, PYTHONPATH=str(package))
    try:
        with emulator_process(seed=1, rate_limit=RATE, **emulator) as emu:
            record = run_child(
                [
                    __file__,
                    "_lib",
                    "--base-url",
                    emu.base_url,
                    "--api-key",
                    emu.api_key,
                    "--inputs",
                    str(listing),
                    "--out",
                    str(out),
                    "--deadline",
                    str(deadline),
                ],
                timeout=deadline + 1800,
                env=env,
            )
            server = emu.stats()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    record.pop("stderr", None)
    record["label"] = label
    record["requests_429"] = server["responses"].get("429", 0)
    record["duplicates"] = len(server["duplicate_metadata"])
    summarize(record, stopped=deadline > 0)
    progress(
        f"{label:>34}: {record['items_per_s']:.1f} items/s of bound {record['bound']:.1f} "
        f"({record['of_bound']:.0%}), peak in flight {record['peak_in_flight']}, poll share "
        f"{record['poll_share']:.1%}, RSS {record['peak_rss_mib']:.0f} MiB, "
        f"{record['seconds']:.0f} s"
    )
    return record


def summarize(record: dict[str, Any], *, stopped: bool) -> None:
    created, finished = record.pop("created"), record.pop("finished")
    # Downloads go to the CDN origin, which the account's limit does not count.
    requests = {r: n for r, n in record["requests"].items() if "<" not in r}
    record["requests"] = requests
    api = sum(requests.values())
    items = max(1, len(created))
    polls = sum(requests.get(r, 0) for r in POLL_ROUTES)
    record["requests_per_item"] = api / items
    # The bound: 60 / (requests an item costs to start: upload, create, lookups). Polling is
    # what the window and the poll share must keep small for the run to come near it.
    record["start_requests_per_item"] = (api - polls) / items
    record["bound"] = RATE / record["start_requests_per_item"]
    record["poll_requests"] = polls
    record["poll_share"] = polls / max(1, api)
    record["poll_budget_share"] = polls / (RATE * record["seconds"])
    record["created_items"] = len(created)
    record["finished_items"] = len(finished)
    if stopped:
        # Creations over the second half of the run (completions equal them in steady state).
        half = record["seconds"] / 2
        late = [t for t in created if t >= half]
        record["items_per_s"] = len(late) / max(1e-9, record["seconds"] - half)
        record["measure"] = "created/s, 2nd half"
    else:
        # Creations over their middle half: once the window has filled, a capped window
        # holds creations to its completion rate; sweeps batch completions, creations not.
        quarter = len(created) // 4
        span = created[3 * quarter] - created[quarter] if quarter >= 2 else record["seconds"]
        record["items_per_s"] = (2 * quarter if quarter >= 2 else len(created)) / span
        record["measure"] = "created/s, middle half"
        record["overall"] = len(finished) / record["seconds"]
    record["of_bound"] = record["items_per_s"] / record["bound"]


def scenarios(quick: bool) -> list[dict[str, Any]]:
    if quick:
        short, long = {"delay": 3.0, "jitter": 3.0}, {"delay": 12.0, "jitter": 12.0}
        return [
            {"tasks": "3-6 s", "emulator": short, "files": 300, "urls": 500, "deadline": 0},
            {"tasks": "12-24 s", "emulator": long, "files": 1200, "urls": 2500, "deadline": 40},
        ]
    short, long = {"delay": 30.0, "jitter": 30.0}, {"delay": 120.0, "jitter": 120.0}
    return [
        {"tasks": "30-60 s", "emulator": short, "files": 2000, "urls": 3000, "deadline": 0},
        {"tasks": "120-240 s", "emulator": long, "files": 7000, "urls": 14000, "deadline": 240},
    ]


def url_listing(directory: pathlib.Path, base: str, count: int) -> pathlib.Path:
    listing = directory / f"urls-{count}.txt"
    with open(listing, "w") as out:
        for index in range(count):
            out.write(f"{base}/catalog/track%20{index:06d}.wav\n")
    return listing


def measure(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-window-", dir=args.tmp) as tmp:
        root = pathlib.Path(tmp)
        baseline = baseline_tree(args.baseline, root)
        wav = write_tiny_wav(root / "source.wav")
        with url_server(wav) as base:
            for plan in scenarios(args.quick):
                if args.long_seconds and plan["deadline"] and not args.quick:
                    plan["deadline"] = args.long_seconds
                for kind in ("files", "urls"):
                    if args.case and f"{kind}:{plan['tasks']}" not in args.case:
                        continue
                    count = plan[kind]
                    if kind == "files":
                        listing = make_catalog(root / f"files-{count}", count)
                    else:
                        listing = url_listing(root, base, count)
                    # The pair side by side: the same load on the machine for both.
                    before = (
                        "fixed 1000 (before)"
                        if args.baseline == BASELINE_REF
                        else f"baseline {args.baseline}"
                    )
                    contenders = {before: baseline, "adaptive": ROOT}
                    with concurrent.futures.ThreadPoolExecutor(2) as pool:
                        futures = {
                            name: pool.submit(
                                run_one,
                                f"{plan['tasks']} {kind} {name}",
                                listing,
                                emulator=plan["emulator"],
                                deadline=plan["deadline"],
                                package=package,
                                scratch=root,
                            )
                            for name, package in contenders.items()
                        }
                        for name, future in futures.items():
                            record = future.result()
                            record.update(
                                tasks=plan["tasks"], inputs=kind, engine=name, count=count
                            )
                            runs.append(record)
        if args.case:  # a chosen pair only: no memory figure
            return {"info": info, "runs": runs, "memory": None, "end_load": loadavg()}
        memory = run_child([__file__, "_memory", "--tasks", str(args.memory_tasks)], timeout=1800)
        memory.pop("stderr", None)
        progress(
            f"memory at {memory['tasks']} in flight: {memory['traced_kib_per_task']:.2f} KiB/task "
            f"traced, {memory['rss_kib_per_task']:.2f} KiB/task RSS"
        )
    return {
        "info": info,
        "runs": runs,
        "memory": memory,
        "end_load": loadavg(),
        "baseline": args.baseline,
    }


def measure_latency(args: argparse.Namespace) -> dict[str, Any]:
    """300 files (150 quick) with 0.5 s added to every API request: 4 uploads vs adaptive."""
    info = machine_info()
    count = 150 if args.quick else 300
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-window-", dir=args.tmp) as tmp:
        root = pathlib.Path(tmp)
        baseline = baseline_tree(args.baseline, root)
        listing = make_catalog(root / "files", count)
        contenders = {"fixed 4 uploads (before)": baseline, "adaptive": ROOT}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {
                name: pool.submit(
                    run_one,
                    f"latency 0.5 s {name}",
                    listing,
                    emulator={"delay": 0.2, "latency": 0.5},
                    deadline=0,
                    package=package,
                    scratch=root,
                )
                for name, package in contenders.items()
            }
            for name, future in futures.items():
                runs.append({**future.result(), "engine": name, "count": count})
    return {"info": info, "runs": runs, "end_load": loadavg()}


def render_latency(data: dict[str, Any], argv: list[str]) -> str:
    lines = [
        "## Upload concurrency that follows the network (`bench_window.py --latency`)",
        "",
        machine_line(data["info"], data["end_load"]),
        "",
        f"Command: `{command_line('benchmarks/bench_window.py', argv)}`. The emulator adds "
        "0.5 s to every API request (60 requests/s on both sides, 0.2 s tasks); both engines "
        "side by side, each on its own emulator.",
        "",
        "| inputs | engine | seconds | done/s | uploads at once (end) | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        uploads = r.get("upload_concurrency") or 4
        lines.append(
            f"| {r['count']} files | {r['engine']} | {r['seconds']:.0f} | {r['overall']:.1f} "
            f"| {uploads} | {r['peak_rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def render(data: dict[str, Any], argv: list[str]) -> str:
    lines = [
        "## Keeping the budget full: fixed window vs adaptive (`bench_window.py`)",
        "",
        machine_line(data["info"], data["end_load"]),
        "",
        f"Command: `{command_line('benchmarks/bench_window.py', argv)}`. Emulator token bucket "
        "and client limiter at 60 requests/s; one target per task; each pair (baseline and "
        "adaptive) ran side by side, each on its own emulator process. Bound = 60 / (API "
        "requests an item costs to start: uploads, creates, lookups, as measured in that run; "
        "the requests/item column adds the polls). Baseline: the engine before the window "
        f"work (`git archive {data.get('baseline', BASELINE_REF)}`): `max_in_flight=1000`, 4 "
        "uploads, per-task poll backoff.",
        "",
        "| tasks | inputs | engine | measured | items/s | bound | of bound | run: s (done/s) "
        "| requests/item "
        "| peak in flight (window) | poll share of requests | polls / budget | uploads at "
        "once | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        window = f"{r['peak_in_flight']:,}"
        if r.get("peak_window"):
            window += f" ({r['peak_window']:,})"
        uploads = r.get("upload_concurrency") or 4
        run = f"{r['seconds']:.0f}"
        run += f" ({r['overall']:.1f})" if "overall" in r else " (stopped)"
        lines.append(
            f"| {r['tasks']} | {r['count']:,} {r['inputs']} | {r['engine']} | {r['measure']} "
            f"| {r['items_per_s']:.1f} | {r['bound']:.1f} | {r['of_bound']:.0%} "
            f"| {run} | {r['requests_per_item']:.2f} | {window} | {r['poll_share']:.1%} "
            f"| {r['poll_budget_share']:.1%} | {uploads if r['inputs'] == 'files' else '-'} "
            f"| {r['peak_rss_mib']:.0f} MiB |"
        )
    m = data["memory"]
    lines += [
        "",
        f"Engine state per task in flight at {m['tasks']:,} in flight (in-process provider, "
        f"two targets per task, journal on disk): {m['traced_kib_per_task']:.2f} KiB/task "
        f"allocated (tracemalloc, {m['traced_mib']:.0f} MiB in all), "
        f"{m['rss_kib_per_task']:.2f} KiB/task RSS growth ({m['rss_growth_mib']:.0f} MiB); "
        f"peak RSS {m['peak_rss_mib']:.0f} MiB.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("_lib")
    child.add_argument("--base-url", required=True)
    child.add_argument("--api-key", required=True)
    child.add_argument("--inputs", required=True)
    child.add_argument("--out", required=True)
    child.add_argument("--deadline", type=float, default=0.0)
    memory = sub.add_parser("_memory")
    memory.add_argument("--tasks", type=int, default=20_000)
    memory.add_argument("--no-trace", dest="trace", action="store_false")
    parser.add_argument("--quick", action="store_true", help="short tasks, small sizes")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md")
    parser.add_argument("--baseline", default=None, help="git ref of the baseline engine")
    parser.add_argument("--long-seconds", type=float, default=0.0, help="stop long runs after")
    parser.add_argument("--memory-tasks", type=int, default=20_000)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--latency", action="store_true", help="only the added-latency runs")
    parser.add_argument("--raw", default=None, help="also save the raw figures (JSON) here")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        help="only this pair, e.g. 'urls:30-60 s' (repeatable; prints, never writes RESULTS.md)",
    )
    args = parser.parse_args()
    if args.command == "_lib":
        print(json.dumps(asyncio.run(_lib(args))))
        return
    if args.command == "_memory":
        print(json.dumps(_memory(args)))
        return
    if args.baseline is None:
        # The engine just before the window work: on main, "merge-base HEAD main" is HEAD
        # itself (adaptive on both sides), which measured nothing.
        args.baseline = BASELINE_REF
    argv = [a for a in sys.argv[1:] if a != "--write"]
    if args.latency:
        text = render_latency(measure_latency(args), argv)
        section = "window-latency"
    else:
        data = measure(args)
        if args.case:
            for run in data["runs"]:
                print(json.dumps({k: v for k, v in run.items() if not isinstance(v, list)}))
            return
        if args.raw:
            pathlib.Path(args.raw).write_text(json.dumps(data, indent=1))
        text = render(data, argv)
        section = "window"
    print(text)
    if args.write or args.quick:
        write_section(section, text, results_file(args.quick))


if __name__ == "__main__":
    main()
