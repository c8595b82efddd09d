"""Shared helpers of the benchmark suite (``run_all.py`` and the ``bench_*.py`` scripts).

- :func:`machine_info`: what the figures were measured on (CPU, RAM, Python, aiohttp, load).
- :func:`emulator_process`: the emulator in a process of its own (its CPU and memory are never
  counted against a contender), started from its command line with knobs as flags.
- :func:`run_child`: one contender in its own subprocess; it prints one JSON line last.
- :func:`peak_rss_mib`: peak RSS of the calling process, ``VmHWM`` (call it in the child).
- :func:`fmt`: "median (min–max)" of repeated runs.
- :func:`write_section`: replace one ``<!-- bench:NAME -->`` section of ``RESULTS.md``, leaving
  every other section (other benchmarks, hand-written notes) as it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pathlib
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
#: Quick (smoke) figures go here, never over the measured ones (ignored by git).
QUICK_RESULTS = HERE / "RESULTS-quick.md"


def results_file(quick: bool) -> pathlib.Path:
    return QUICK_RESULTS if quick else RESULTS


def plot_file(quick: bool) -> pathlib.Path:
    return HERE / ("results-quick.png" if quick else "results.png")


MIB = 1 << 20


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def loadavg() -> str:
    """The 1/5/15-minute load averages from ``/proc/loadavg``."""
    fields = _read("/proc/loadavg").split()
    return " ".join(fields[:3]) if fields else "unknown"


def machine_info() -> dict[str, str]:
    """nproc, CPU model, RAM, Python and aiohttp versions, load average, date."""
    import aiohttp

    cpu = re.search(r"model name\s*:\s*(.+)", _read("/proc/cpuinfo"))
    mem = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo"))
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "ram": f"{int(mem.group(1)) / 1024**2:.1f} GiB" if mem else "unknown",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "loadavg": loadavg(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: dict[str, str] | None = None, end_load: str | None = None) -> str:
    """One line: the machine, versions, start time and load average (at start, and at end)."""
    info = info or machine_info()
    load = f"load average (1/5/15 min) at start {info['loadavg']}"
    if end_load:
        load += f", at end {end_load}"
    return (
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, {info['os']}; "
        f"Python {info['python']}, aiohttp {info['aiohttp']}; started {info['date']}; {load}."
    )


def command_line(script: str, argv: Sequence[str]) -> str:
    return " ".join(["python", script, *(shlex.quote(a) for a in argv)])


# --------------------------------------------------------------------------- processes


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    ``VmHWM`` of ``/proc/self/status`` where it exists: ``ru_maxrss`` of a process started by
    a larger one also counts the parent's pages from before ``exec`` (Linux keeps the fork's
    high-water mark), so every child of a 60 MiB driver would report at least 60 MiB.
    ``VmHWM`` is the peak of this process's own address space. Elsewhere ``ru_maxrss``.
    """
    match = re.search(r"VmHWM:\s*(\d+) kB", _read("/proc/self/status"))
    if match:
        return int(match.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class EmulatorHandle(NamedTuple):
    base_url: str
    api_key: str
    cdn_url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the emulator process has used so far (Linux)."""
        fields = _read(f"/proc/{self.pid}/stat").rpartition(")")[2].split()
        if len(fields) < 13:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``: the emulator's own counters (requests by route, CDN)."""
        with urllib.request.urlopen(f"{self.base_url}/_emulator/stats", timeout=60) as response:
            data: dict[str, Any] = json.load(response)
        return data


@contextlib.contextmanager
def emulator_process(**knobs: Any) -> Iterator[EmulatorHandle]:
    """Run ``python -m audioshake_async.emulator`` with ``knobs`` as flags; stop it on exit.

    ``rate_limit=None`` disables the emulator's token bucket (``--rate-limit none``).
    """
    command = [sys.executable, "-m", "audioshake_async.emulator", "--quiet"]
    for name, value in knobs.items():
        command += ["--" + name.replace("_", "-"), "none" if value is None else str(value)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        variables: dict[str, str] = {}
        while len(variables) < 3:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"emulator exited with {process.wait()} before it was ready")
            name, _, value = line.strip().partition("=")
            variables[name] = value
        yield EmulatorHandle(
            variables["AUDIOSHAKE_BASE_URL"],
            variables["AUDIOSHAKE_API_KEY"],
            variables["AUDIOSHAKE_CDN_URL"],
            process.pid,
        )
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_child(
    argv: Sequence[str], *, timeout: float = 1800, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``python *argv`` and return the JSON object on the last line of its stdout.

    The child's stderr (a profile, warnings) comes back under ``"stderr"``.
    """
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"child {' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}"
            f"{done.stderr[-6000:]}"
        )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"child {' '.join(argv)} printed nothing:\n{done.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(lines[-1])
    record.setdefault("wall_seconds_process", time.perf_counter() - started)
    record["stderr"] = done.stderr
    return record


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


def write_tiny_wav(path: pathlib.Path, seconds: float = 0.05, rate: int = 8000) -> pathlib.Path:
    """A small stereo 16-bit PCM WAV (a tone on the left, silence on the right)."""
    import math
    import struct

    frames = int(seconds * rate)
    data = b"".join(
        struct.pack("<hh", int(8000 * math.sin(2 * math.pi * 440 * i / rate)), 0)
        for i in range(frames)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(data)
    return path


def make_catalog(directory: pathlib.Path, count: int) -> pathlib.Path:
    """``count`` distinct input paths (hard links to one tiny WAV; symlinks if links fail).

    Returns a text file listing the paths, one per line, for the child to stream lazily.
    """
    directory.mkdir(parents=True, exist_ok=True)
    source = write_tiny_wav(directory / "_source.wav")
    listing = directory / "_inputs.txt"
    with open(listing, "w") as out:
        for index in range(count):
            sub = directory / f"{index // 1000:04d}"
            if index % 1000 == 0:
                sub.mkdir(exist_ok=True)
            path = sub / f"track-{index:06d}.wav"
            if not path.exists():
                try:
                    os.link(source, path)
                except OSError:
                    os.symlink(source, path)
            out.write(f"{path}\n")
    return listing


# --------------------------------------------------------------------------- statistics


def summarize(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(values: Sequence[float], digits: int = 0) -> str:
    """``median (min–max)``; just the value for a single run."""
    median, low, high = summarize(values)
    if len(values) == 1:
        return f"{median:,.{digits}f}"
    return f"{median:,.{digits}f} ({low:,.{digits}f}–{high:,.{digits}f})"


# --------------------------------------------------------------------------- RESULTS.md


HEADER = "# Benchmark results\n\n"


def write_section(name: str, body: str, path: pathlib.Path = RESULTS, *, top: bool = False) -> None:
    """Put ``body`` between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in ``path``.

    Only that section changes: other engineers' sections and hand-written notes stay. A new
    section is appended at the end, or with ``top`` right under the file's title.
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    elif top and text.startswith("# "):
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{section}\n{rest.lstrip(chr(10))}"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
