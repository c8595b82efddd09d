"""The benchmark suite, side by side, in one run: ``nox -s bench`` (``-- --quick`` for a smoke run).

1. ``bench_overhead.py``: client CPU per request, ``client.tasks.get()`` vs bare aiohttp;
2. ``bench_transfer.py``: 1 GiB upload/download, library vs bare aiohttp vs curl;
3. ``bench_batch.py``: catalog batch (items/s, requests per item, RSS), the 60 req/s ceiling,
   1000 tasks in flight, the naive ``requests`` peer, scaling 1k/10k/100k (+ ``results.png``);
4. ``bench_musicai.py`` (the Music.AI engineer's, run when present; ``--reps 3`` in full mode):
   vs the official SDK; its ``--json`` figures go to the summary and under the peers table,
   its section of RESULTS.md stays its owner's;
5. ``bench_s3.py``: requests per item and items/s for file vs s3:// inputs at 60 req/s, one
   large output CDN -> S3 vs disk (writes its own section in full mode);
6. ``bench_shared_limit.py``: 1, 2, 4 and 8 worker processes on one account at 60 requests/s,
   the shared PostgreSQL limiter vs one in-process limiter per worker (starts its own
   PostgreSQL).

Full mode writes ``benchmarks/RESULTS.md`` (the summary at the top, then each benchmark
replaces only its own sections; ``bench_transfer.py --write`` refreshes its own) and
``benchmarks/results.png``. ``--quick`` (small sizes, one run each, under 2 minutes) writes
``benchmarks/RESULTS-quick.md`` and ``benchmarks/results-quick.png`` instead, so smoke figures
never replace measured ones; ``--no-write`` writes nothing; ``--smoke`` (tiny sizes, nothing
written) is what ``tests/test_benchmarks_smoke.py`` runs.

    python benchmarks/run_all.py                      # full: ~1 hour on 2 cores
    python benchmarks/run_all.py --quick              # smoke run
    python benchmarks/run_all.py --smoke --only overhead,batch
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_batch
import bench_overhead
import bench_shared_limit
import bench_transfer
from _common import (
    HERE,
    ROOT,
    command_line,
    loadavg,
    machine_info,
    machine_line,
    plot_file,
    progress,
    results_file,
    write_section,
)

ALL = ("overhead", "transfer", "batch", "musicai", "s3", "shared")


def run_script(name: str, argv: list[str]) -> tuple[int, str]:
    """Run another benchmark script as is; echo its progress; return (exit code, stdout)."""
    command = [sys.executable, str(HERE / name), *argv]
    progress(f"--- {' '.join(['python', 'benchmarks/' + name, *argv])}")
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        progress(f"{name} exited with {done.returncode}")
    return done.returncode, done.stdout


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _numbers(cell: str) -> list[float]:
    """The figures of a "median (min–max)" cell: ``"1,106 (1,094–1,141)"`` -> 3 floats."""
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", cell)]


def transfer_rows(stdout: str) -> dict[Any, Any]:
    """``(operation, contender) -> (MiB/s, RSS MiB, vs bare, highest RSS MiB)`` from
    bench_transfer's table (medians; the highest RSS of the runs, which its target is
    judged on), and ``"size"``: its "Transfer of N MiB" line."""
    rows: dict[Any, Any] = {"size": "1 GiB"}
    size = re.search(r"Transfer of (\d+) MiB", stdout)
    if size:
        mib = int(size.group(1))
        rows["size"] = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
    # Its own verdicts ("Targets: upload: peak RSS < 100 MiB met, throughput >= 90% ... met").
    for operation, rss_ok, rate_ok in re.findall(
        r"(upload|download): peak RSS < \d+ MiB (met|MISSED), throughput >= \d+% of bare "
        r"(met|MISSED)",
        stdout,
    ):
        rows[("verdict", operation)] = (rss_ok, rate_ok)
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("upload", "download"):
            # The medians only (the section itself shows min–max).
            rows[(cells[0], cells[1])] = (
                cells[2].split()[0],
                cells[3].split()[0],
                cells[4],
                max(_numbers(cells[3])),
            )
    return rows


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summary(
    results: dict[str, Any], info: dict[str, str], argv: list[str], load_end: str, minutes: float
) -> str:
    """One table of ratios: what a user choosing the library asks first; every row states its
    target (or that it has none) and the verdict."""
    lines = [
        "## Summary (audioshake-async vs the alternatives, one machine, one run)",
        "",
        machine_line(info, load_end),
        f"Command: `{command_line('benchmarks/run_all.py', argv)}` ({minutes:.0f} min). "
        "Other processes may have been running on the machine during the run (other "
        "engineers' test suites share the 2 cores; see the load averages): absolute figures "
        "are conservative; contenders alternate within each repetition and medians (min–max "
        "in each section) are what to compare. Ratios are of medians; a verdict is judged as "
        "in the benchmark's own section (RSS targets on the highest run).",
        "",
        "| question | audioshake-async | alternative | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    overhead = results.get("overhead")
    if overhead:
        runs = overhead["runs"]
        target = bench_overhead.TARGET_RATIO
        for concurrency in bench_overhead.CONCURRENCIES:
            lib = median_of(runs[f"lib:{concurrency}"], "cpu_us")
            bare = median_of(runs[f"bare:{concurrency}"], "cpu_us")
            lines.append(
                f"| client CPU per `tasks.get()`, concurrency {concurrency} | {lib:.0f} µs "
                f"| bare aiohttp {bare:.0f} µs | {lib / bare:.2f}x | ≤ {target}x bare "
                f"| {verdict(lib / bare <= target)} |"
            )
    transfer = results.get("transfer")
    if transfer:
        size = transfer["size"]
        for operation in ("upload", "download"):
            lib = transfer.get((operation, "audioshake-async"))
            bare = transfer.get((operation, "bare aiohttp"))
            curl = transfer.get((operation, "curl (C, libcurl)"))
            if lib and bare:
                share = _numbers(lib[2])[0] / 100
                rss_v, rate_v = transfer.get(
                    ("verdict", operation),
                    (
                        verdict(lib[3] < bench_transfer.RSS_TARGET_MIB),
                        verdict(share >= bench_transfer.THROUGHPUT_TARGET),
                    ),
                )
                lines.append(
                    f"| {size} {operation}, MiB/s (peak RSS) | {lib[0]} ({lib[1]} MiB) "
                    f"| bare aiohttp {bare[0]} ({bare[1]} MiB) | {lib[2]} of bare "
                    f"| throughput ≥ {bench_transfer.THROUGHPUT_TARGET:.0%} of bare; peak RSS < "
                    f"{bench_transfer.RSS_TARGET_MIB} MiB "
                    f"| throughput {rate_v}; RSS {rss_v} |"
                )
            if lib and curl:
                lines.append(
                    f"| {size} {operation} vs curl | {lib[0]} "
                    f"| curl {curl[0]} ({curl[1]} MiB) "
                    f"| curl at {curl[2]} of bare | none (a C reference) | — |"
                )
    batch = results.get("batch")
    if batch:
        lines += batch_rows(batch)
    musicai = results.get("musicai")
    if musicai:
        rates = musicai["jobs_per_s"]
        lines.append(
            f"| Music.AI: {musicai['jobs']:,} jobs end to end (a different API and workload; "
            f"`bench_musicai.py`, this run, {musicai['reps']} run(s)) "
            f"| batch engine {statistics.median(rates['ours']):.1f} jobs/s, upload of "
            f"{musicai['upload_mib']:,} MiB at {musicai['upload_peak_rss_mib']:.0f} MiB RSS "
            f"| `musicai-sdk` as shipped {statistics.median(rates['sdk']):.1f} jobs/s, "
            f"{musicai['upload_sdk_peak_rss_mib']:.0f} MiB RSS "
            f"| {musicai['speedup']['ours']:.1f}x the SDK "
            f"| ≥ {musicai['throughput_target']:g}x the SDK; upload peak RSS < "
            f"{musicai['rss_target_mib']} MiB "
            f"| throughput {musicai['throughput_verdict']}; RSS {musicai['rss_verdict']} |"
        )
    shared = results.get("shared")
    if shared:
        lines += shared_rows(shared)
    failed = results.get("failed")
    if failed:
        lines += ["", "Benchmarks that failed in this run: " + ", ".join(failed) + "."]
    return "\n".join(lines) + "\n"


def batch_rows(batch: dict[str, Any]) -> list[str]:
    """The summary rows of bench_batch's workloads, with the targets of its sections."""
    plan = batch["plan"]
    lines = []
    runs = batch["scaling"][plan["catalog"]]
    totals = bench_batch.total_per_item(runs)
    rss_max = max(r["peak_rss_mib"] for r in runs)
    budget = 1 + 1 + 2 + bench_batch.OUTPUTS_PER_ITEM
    lines.append(
        f"| catalog of {plan['catalog']:,}: items/s, peak RSS, requests/item (API and CDN) | "
        f"{median_of(runs, 'items_per_s'):.0f} items/s, "
        f"{median_of(runs, 'peak_rss_mib'):.0f} MiB, {statistics.median(totals):.2f} "
        f"requests/item | | | peak RSS < {bench_batch.RSS_TARGET_MIB} MiB; ≤ {budget} "
        f"requests/item | RSS {verdict(rss_max < bench_batch.RSS_TARGET_MIB)}; requests "
        f"{verdict(max(totals) <= budget)} |"
    )
    ceiling = batch["ceiling"]
    c_api = statistics.median(bench_batch.api_per_item(ceiling))
    lines.append(
        f"| at the documented 60 req/s | {median_of(ceiling, 'items_per_s'):.1f} items/s "
        f"| bound 60 / {c_api:.2f} API requests per item = {60 / c_api:.1f} items/s "
        f"| {median_of(ceiling, 'items_per_s') / (60 / c_api):.0%} of the bound "
        "| none (the bound is the reference) | — |"
    )
    polls = {}
    for refresh in (False, True):
        wait = batch[f"wait:{refresh}"]
        polls[refresh] = statistics.median(
            (
                bench_batch.by_kind(r["requests"]).get("poll", 0)
                + bench_batch.by_kind(r["requests"]).get("list page", 0)
            )
            / r["items"]
            for r in wait
        )
    lines.append(
        f"| polling requests per task, {plan['wait']:,} in flight | list pages "
        f"{polls[True]:.2f} | per-task GETs {polls[False]:.2f} "
        f"| {polls[False] / max(polls[True], 1e-9):.0f}x fewer "
        f"| list pages cost fewer requests | {verdict(polls[True] < polls[False])} |"
    )
    lib_small = batch["scaling"][plan["naive"]]
    for poll in sorted(batch["naive"], reverse=True):
        naive = batch["naive"][poll]
        ratio = median_of(lib_small, "items_per_s") / median_of(naive, "items_per_s")
        lines.append(
            f"| {plan['naive']:,} items: items/s (peak RSS) | "
            f"{median_of(lib_small, 'items_per_s'):.0f} "
            f"({median_of(lib_small, 'peak_rss_mib'):.0f} MiB) | naive requests + 16 "
            f"threads, poll {poll:g} s: {median_of(naive, 'items_per_s'):.1f} "
            f"({median_of(naive, 'peak_rss_mib'):.0f} MiB) | {ratio:.1f}x "
            f"| ≥ {bench_batch.PEER_TARGET:g}x the naive client "
            f"| {verdict(ratio >= bench_batch.PEER_TARGET)} |"
        )
    scaling = batch["scaling"]
    sizes = sorted(scaling)
    first, last = sizes[0], sizes[-1]
    rate_first, rate_last = (median_of(scaling[n], "items_per_s") for n in (first, last))
    rss_all = max(r["peak_rss_mib"] for n in sizes for r in scaling[n])
    lines.append(
        f"| scaling {first:,} → {last:,} inputs | {rate_first:.0f} → {rate_last:.0f} items/s "
        f"| peak RSS {median_of(scaling[first], 'peak_rss_mib'):.0f} → "
        f"{median_of(scaling[last], 'peak_rss_mib'):.0f} MiB | see `results.png` "
        f"| linear cost: items/s at {last:,} ≥ 90% of at {first:,}; flat memory: peak RSS "
        f"< {bench_batch.RSS_TARGET_MIB} MiB at every size "
        f"| cost {verdict(rate_last >= 0.9 * rate_first)}; memory "
        f"{verdict(rss_all < bench_batch.RSS_TARGET_MIB)} |"
    )
    return lines


def run_musicai(mode: list[str], full: bool) -> tuple[int, str, dict[str, Any] | None]:
    """bench_musicai.py (``--reps 3`` in full mode); its ``--json`` headline figures."""
    with tempfile.TemporaryDirectory(prefix="run-all-musicai-") as tmp:
        path = Path(tmp) / "musicai.json"
        extra = ["--reps", "3"] if full else []
        code, stdout = run_script("bench_musicai.py", [*mode, *extra, "--json", str(path)])
        figures = json.loads(path.read_text()) if code == 0 and path.exists() else None
    return code, stdout, figures


def run_shared(mode: list[str], smoke: bool) -> tuple[int, str, list[dict[str, Any]] | None]:
    """bench_shared_limit.py; its ``--json`` rows (one per workers x limiter)."""
    with tempfile.TemporaryDirectory(prefix="run-all-shared-") as tmp:
        path = Path(tmp) / "shared.json"
        extra = ["--workers", "1,2", "--seconds", "1", "--wide-jitter", "0"] if smoke else []
        code, stdout = run_script("bench_shared_limit.py", [*mode, *extra, "--json", str(path)])
        rows = json.loads(path.read_text()) if code == 0 and path.exists() else None
    return code, stdout, rows


def shared_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The summary row of bench_shared_limit: the most workers measured, shared vs control."""
    most = max(r["workers"] for r in rows)
    by_mode = {r["mode"]: r for r in rows if r["workers"] == most and r["default"]}
    shared, control = by_mode["shared"], by_mode["control"]
    rate = bench_shared_limit.RATE
    share = shared["per_s"] / rate
    return [
        f"| {most} worker processes, one account at 60 req/s: requests/s (max in any 1 s, "
        f"429s) | shared PostgreSQL limiter {shared['per_s']:.1f} (max {shared['max_1s']}, "
        f"{shared['r429']} x 429, {shared['round_trips_per_request']:.2f} PostgreSQL "
        f"statements/request) | a limiter per process {control['per_s']:.1f} (max "
        f"{control['max_1s']}, {control['r429']} x 429) | {share:.0%} of 60 "
        f"| ≥ {bench_shared_limit.TARGET_SHARE:.0%} of 60; never above 60 in 1 s; zero 429s "
        f"| rate {verdict(share >= bench_shared_limit.TARGET_SHARE)}; "
        f"window {verdict(shared['max_1s'] <= rate)}; 429s {verdict(shared['r429'] == 0)} |"
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes for the test suite (implies --quick and --no-write; figures meaningless)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument(
        "--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}"
    )
    parser.add_argument("--tmp", default=None, help="where the batch catalogs and outputs go")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(ALL))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    if args.smoke:
        args.quick, args.no_write = True, True
    write = not args.no_write
    target = results_file(args.quick)
    plot_path = plot_file(args.quick)
    mode = ["--quick"] if args.quick else []
    info = machine_info()
    via = command_line("benchmarks/run_all.py", argv)
    progress(machine_line(info))
    started = time.perf_counter()
    results: dict[str, Any] = {"failed": []}
    texts: dict[str, str] = {}

    if "overhead" in only:
        progress("=== per-request overhead")
        result = bench_overhead.measure(args.quick, requests=200 if args.smoke else None)
        results["overhead"] = result
        texts["overhead"] = bench_overhead.section(result, mode, via)

    if "transfer" in only:
        progress("=== 1 GiB transfer (bench_transfer.py)")
        # Full mode: bench_transfer writes its own section of RESULTS.md, as when run alone.
        extra = ["--write"] if write and not args.quick else []
        code, stdout = run_script("bench_transfer.py", mode + extra)
        if code == 0:
            results["transfer"] = transfer_rows(stdout)
            if args.quick:
                texts["transfer"] = "## Transfer (quick)\n\n" + stdout.strip() + "\n"
        else:
            results["failed"].append("bench_transfer.py")

    if "batch" in only:
        progress("=== catalog batch, peers, scaling")
        batch_mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        data = bench_batch.measure(batch_mode, args.tmp)
        results["batch"] = data
        if write:
            bench_batch.plot(data, plot_path)

    if "musicai" in only:
        script = HERE / "bench_musicai.py"
        if script.exists():
            progress("=== Music.AI vs musicai-sdk (bench_musicai.py)")
            # Not --write: its section in RESULTS.md is its owner's (often run with other
            # options); this run's figures go to the summary and under the peers table.
            code, stdout, figures = run_musicai(mode, full=not args.quick)
            if code == 0 and figures:
                results["musicai"] = figures
                if args.quick:
                    texts["musicai"] = "## Music.AI (quick)\n\n" + stdout.strip() + "\n"
            else:
                results["failed"].append("bench_musicai.py")
        else:
            progress("bench_musicai.py not present: skipped")

    if "s3" in only:
        progress("=== catalogs in object storage (bench_s3.py)")
        extra = ["--write"] if write and not args.quick else []
        if args.smoke:
            extra = ["--items", "6", "--size-mib", "16"]
        code, stdout = run_script("bench_s3.py", mode + extra)
        if code == 0:
            if args.quick:
                texts["s3"] = stdout.strip() + "\n"
        else:
            results["failed"].append("bench_s3.py")
    if "shared" in only:
        progress("=== shared rate budget (bench_shared_limit.py)")
        code, stdout, rows = run_shared(mode, args.smoke)
        if code == 0 and rows:
            results["shared"] = rows
            texts["shared"] = stdout.strip() + "\n"
        else:
            results["failed"].append("bench_shared_limit.py")

    if "batch" in results:
        # After bench_musicai: the peers section points to its ratio (a different workload).
        texts.update(
            bench_batch.sections(
                results["batch"], mode, "benchmarks/bench_batch.py", via, results.get("musicai")
            )
        )
    minutes = (time.perf_counter() - started) / 60
    texts["summary"] = summary(results, info, argv, loadavg(), minutes)
    order = [
        "summary",
        "overhead",
        "transfer",
        "batch",
        "peers",
        "scaling",
        "musicai",
        "s3",
        "shared",
    ]
    for name in order:
        if name in texts:
            print(texts[name])
    if write:
        for name in order:
            if name in texts:
                write_section(name, texts[name], target, top=name == "summary")
        plotted = f" and {plot_path.name}" if "batch" in results else ""
        progress(f"wrote {target.relative_to(ROOT)}{plotted}")
    progress(f"suite done in {minutes:.1f} min")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
