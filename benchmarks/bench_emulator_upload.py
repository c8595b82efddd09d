"""Peak RSS of the emulator while it receives a 1 GiB upload: it must stream it to disk.

The emulator runs in a process of its own (``python -m audioshake_async.emulator``, started by
:func:`_common.emulator_process`, a fresh one per repetition so each peak is that upload's own).
This driver streams the file with the library's ``client.assets.upload`` and then reads the
emulator process's peak resident set size, ``VmHWM`` in ``/proc/<pid>/status`` (the kernel's
high-water mark, so no sampling can miss a spike). The source is a sparse file of zeros: the
client reads it fast, and its content does not matter to the emulator, which stores the bytes
without decoding them. The emulator writes the upload to its temp directory (``--tmp``).

    python benchmarks/bench_emulator_upload.py                   # 1 GiB, 3 repetitions
    python benchmarks/bench_emulator_upload.py --quick           # 64 MiB, 1 repetition
    python benchmarks/bench_emulator_upload.py --reps 3 --write  # also update RESULTS.md

``--write`` replaces the section between ``<!-- bench_emulator_upload:start -->`` and
``<!-- bench_emulator_upload:end -->`` in ``benchmarks/RESULTS.md`` (appended when missing;
nothing else in the file changes). Quick runs write to ``RESULTS-quick.md`` instead, like
every other benchmark, so smoke figures never replace measured ones. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import (
    MIB,
    command_line,
    emulator_process,
    fmt,
    loadavg,
    machine_info,
    machine_line,
    peak_rss_mib,
    progress,
    results_file,
)

NAME = "bench_emulator_upload"
START = f"<!-- {NAME}:start -->"
END = f"<!-- {NAME}:end -->"
RSS_TARGET_MIB = 100.0


def proc_status_mib(pid: int, field: str) -> float:
    """``VmHWM``/``VmRSS``... of process ``pid`` in MiB, from ``/proc/<pid>/status``."""
    text = pathlib.Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s*(\d+) kB", text, re.M)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/{pid}/status")
    return int(match.group(1)) / 1024


def make_source(directory: pathlib.Path, size: int) -> pathlib.Path:
    """A sparse file of ``size`` zero bytes: no disk space, and read back at memory speed."""
    path = directory / "upload-source.wav"
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


async def upload(base_url: str, api_key: str, path: pathlib.Path) -> float:
    """Upload ``path`` with the library; returns the seconds it took."""
    from audioshake_async import AudioShake

    # The emulator's rate limit is off too: one request, nothing to pace.
    async with AudioShake(api_key, base_url, rate_limit=None) as client:
        started = time.perf_counter()
        await client.assets.upload(path)
        return time.perf_counter() - started


def one_run(path: pathlib.Path, size: int) -> dict[str, float]:
    """One emulator process, one upload: its RSS before, its peak, and the throughput."""
    with emulator_process(rate_limit=None, delay=0) as emu:
        before = proc_status_mib(emu.pid, "VmHWM")  # startup: interpreter, aiohttp, numpy...
        seconds = asyncio.run(upload(emu.base_url, emu.api_key, path))
        stored = emu.stats()["bytes_uploaded"]
        if stored != size:
            raise RuntimeError(f"emulator stored {stored} bytes of {size}")
        peak = proc_status_mib(emu.pid, "VmHWM")
        after = proc_status_mib(emu.pid, "VmRSS")
    return {
        "startup_mib": before,
        "peak_mib": peak,
        "growth_mib": peak - before,
        "rss_after_mib": after,
        "mib_per_s": size / MIB / seconds,
    }


def render(runs: list[dict[str, float]], args: argparse.Namespace, info: dict[str, str]) -> str:
    """The RESULTS.md section (markers excluded)."""

    def col(key: str, digits: int = 1) -> str:
        return fmt([r[key] for r in runs], digits)

    peaks = [r["peak_mib"] for r in runs]
    met = "met" if max(peaks) < RSS_TARGET_MIB else "missed"
    mode = "quick" if args.quick else "full"
    return "\n".join(
        [
            f"## Emulator upload memory ({mode})",
            "",
            machine_line(info, loadavg()),
            f"Command: `{command_line('benchmarks/bench_emulator_upload.py', args.argv)}`",
            "",
            f"A {args.size_mib} MiB upload (`client.assets.upload`, streamed multipart) to the "
            "emulator running in its own process (a fresh one per repetition), "
            f"{len(runs)} repetition(s); median (min–max). RSS figures are the emulator "
            "process's, from `/proc/<pid>/status`.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| emulator peak RSS (`VmHWM`) after the upload, MiB | {col('peak_mib')} |",
            f"| emulator peak RSS before the upload (startup), MiB | {col('startup_mib')} |",
            f"| peak growth during the upload, MiB | {col('growth_mib')} |",
            f"| emulator RSS (`VmRSS`) after the upload, MiB | {col('rss_after_mib')} |",
            f"| upload throughput over loopback, MiB/s | {col('mib_per_s', 0)} |",
            f"| driver (client) peak RSS, all repetitions, MiB | {peak_rss_mib():.1f} |",
            "",
            f"Target: emulator peak RSS < {RSS_TARGET_MIB:.0f} MiB for a {args.size_mib} MiB "
            f"upload: {met} (worst {max(peaks):.1f} MiB).",
        ]
    )


def write_results(body: str, path: pathlib.Path) -> None:
    """Replace this benchmark's marked section of ``path`` (append it when missing)."""
    section = f"{START}\n{body.rstrip()}\n{END}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (1 with ``--check`` if the target is missed)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 repetition")
    parser.add_argument("--size-mib", type=int, default=None, help="upload size (default 1024)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument(
        "--tmp",
        default=None,
        help="directory for the source file and the emulator's storage (default: system temp)",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if a peak reaches {RSS_TARGET_MIB:.0f} MiB"
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.reps = args.reps or (1 if args.quick else 3)
    if not pathlib.Path("/proc/self/status").exists():
        print("needs Linux /proc", file=sys.stderr)
        return 2
    if args.tmp:
        # The emulator process inherits it: its temp directory (the upload's storage) goes there.
        os.environ["TMPDIR"] = args.tmp
    size = args.size_mib * MIB
    info = machine_info()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-emulator-upload-", dir=args.tmp) as tmp:
        source = make_source(pathlib.Path(tmp), size)
        for rep in range(1, args.reps + 1):
            run = one_run(source, size)
            runs.append(run)
            progress(
                f"rep {rep}/{args.reps}: emulator peak {run['peak_mib']:.1f} MiB "
                f"(startup {run['startup_mib']:.1f}), {run['mib_per_s']:.0f} MiB/s"
            )
    body = render(runs, args, info)
    print(body)
    if args.write:
        target = results_file(args.quick)
        write_results(body, target)
        progress(f"wrote the {NAME} section of {target}")
    if args.check and max(r["peak_mib"] for r in runs) >= RSS_TARGET_MIB:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
