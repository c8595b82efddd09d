"""Music.AI: audioshake-async (MusicAIProvider + batch engine) vs the official ``musicai-sdk``.

Both contenders talk to the same local Music.AI emulator in TLS mode (the SDK downloads only
``https://`` results), started fresh for every run in a process of its own. Each contender runs
in its own subprocess and reports its wall-clock time and its peak RSS (``ru_maxrss``, read in
the child).

1. Throughput: N jobs end to end (upload, create, wait, download every result) at 0.2 s of
   emulated processing per job. The SDK runs as shipped (it is synchronous: one job after the
   other, a new connection and TLS handshake per call), and, for reference, from a thread pool
   (caller-side concurrency the SDK does not offer). Both poll every ``--poll`` seconds at
   first (the SDK's fixed ``job_monitor_interval``; ours backs off from it). Our client's
   client-side rate cap is lifted (``rate_limit=None``): the emulator imposes no limit and the
   SDK has none.
2. Peak RSS of one large upload (1 GiB): the SDK reads the whole file into memory; ours
   streams it.

    python benchmarks/bench_musicai.py            # 200 jobs, 1 GiB upload
    python benchmarks/bench_musicai.py --quick    # 20 jobs, 64 MiB (CI)
    python benchmarks/bench_musicai.py --write    # also update benchmarks/RESULTS.md
    python benchmarks/bench_musicai.py --check    # exit 1 when a target is missed
    python benchmarks/bench_musicai.py --reps 3   # every figure: median (min–max) of 3 runs
    python benchmarks/bench_musicai.py --json F   # also the figures as JSON (run_all.py reads it)

``--reps`` repeats the throughput runs and the upload runs alike (contenders alternate inside
each repetition); every figure is shown as median (min–max).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import resource
import shlex
import struct
import subprocess
import sys
import tempfile
import time
import wave

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import fmt

MIB = 1 << 20
HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
WORKFLOW = "stems"
THROUGHPUT_TARGET = 10.0
RSS_TARGET_MIB = 100
SECTION = "bench_musicai"


# --------------------------------------------------------------------------- emulator process


def run_server(args: argparse.Namespace) -> None:
    """Serve a TLS Music.AI emulator; print its addresses; answer ``stats`` lines on stdin."""
    from audioshake_async.emulator.musicai import MusicAIEmulator

    async def main() -> None:
        async with MusicAIEmulator(
            delay=args.delay, tls=True, workdir=args.workdir, dsp_workers=2
        ) as emulator:
            info = {
                "base_url": emulator.base_url,
                "api_key": emulator.api_key,
                "ca_path": str(emulator.ca_path),
            }
            print(json.dumps(info), flush=True)
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    return
                if line.strip() == "stats":
                    print(json.dumps(emulator.stats()), flush=True)

    asyncio.run(main())


class Server:
    """The emulator subprocess of one run."""

    def __init__(self, args: argparse.Namespace, workdir: pathlib.Path) -> None:
        command = [
            sys.executable, __file__, "_server", "--delay", str(args.delay),
            "--workdir", str(workdir),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.info = json.loads(self.process.stdout.readline())

    def stats(self) -> dict[str, object]:
        """The emulator's counters (requests per route, duplicate jobs...)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        data: dict[str, object] = json.loads(self.process.stdout.readline())
        return data

    def close(self) -> None:
        """Close stdin: the emulator stops and removes its files."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- contenders


def sdk_client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The official client, pointed at the emulator."""
    from musicai_sdk import MusicAiClient

    client = MusicAiClient(api_key=args.api_key, job_monitor_interval=args.poll, timeout=120)
    client.base_url = args.base_url  # the documented way to point the SDK elsewhere
    return client


def sdk_jobs(args: argparse.Namespace) -> dict[str, float]:
    """The SDK's documented flow per input: upload, add, wait, download."""
    inputs = sorted(pathlib.Path(args.inputs).glob("*.wav"))
    client = sdk_client(args)
    out = pathlib.Path(args.out)

    def one(path: pathlib.Path) -> None:
        url = client.upload_file(str(path))
        job = client.add_job(path.stem, WORKFLOW, {"inputUrl": url})
        done = client.wait_for_job_completion(job["id"])
        assert done["status"] == "SUCCEEDED", done
        files = client.download_job_results(done, str(out / path.stem))
        assert len(files) == 2, files

    started = time.perf_counter()
    if args.threads:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(one, inputs))
    else:
        for path in inputs:
            one(path)
    return {"seconds": time.perf_counter() - started, "jobs": len(inputs)}


async def ours_jobs(args: argparse.Namespace) -> dict[str, float]:
    """The batch engine over MusicAIProvider, as ``audioshake-async run --provider musicai``."""
    from audioshake_async import PollPolicy, Target
    from audioshake_async.batch import run_batch
    from audioshake_async.musicai import MusicAI, MusicAIProvider

    inputs = sorted(pathlib.Path(args.inputs).glob("*.wav"))  # noqa: ASYNC240 - before the clock
    poll = PollPolicy(initial_interval=args.poll, max_interval=2.0)
    async with MusicAI(args.api_key, args.base_url, rate_limit=None, poll=poll) as client:
        provider = MusicAIProvider(client, workflow=WORKFLOW)
        started = time.perf_counter()
        done = 0
        async for result in run_batch(
            provider,
            inputs,
            targets=[Target(WORKFLOW, ("auto",))],
            out_dir=args.out,
            upload_concurrency=args.concurrency,
            download_concurrency=2 * args.concurrency,
        ):
            assert result.status == "done", result.error
            assert len(result.files) == 3, result.files  # two WAVs and result.json
            done += 1
        seconds = time.perf_counter() - started
        requests = sum(client.request_counts.values())
    return {"seconds": seconds, "jobs": done, "client_requests": requests}


async def client_jobs(args: argparse.Namespace) -> dict[str, float]:
    """The client API as the README shows it, one coroutine per input (no journal)."""
    from audioshake_async import PollPolicy
    from audioshake_async.musicai import MusicAI

    inputs = sorted(pathlib.Path(args.inputs).glob("*.wav"))  # noqa: ASYNC240 - before the clock
    out = pathlib.Path(args.out)
    poll = PollPolicy(initial_interval=args.poll, max_interval=2.0)
    async with MusicAI(args.api_key, args.base_url, rate_limit=None, poll=poll) as client:
        # Transfers are bounded like the engine's stages; waiting holds no slot.
        uploads = asyncio.Semaphore(args.concurrency)
        downloads = asyncio.Semaphore(2 * args.concurrency)

        async def one(path: pathlib.Path) -> None:
            async with uploads:
                url = await client.upload(path)
            job_id = await client.jobs.create(path.stem, WORKFLOW, {"inputUrl": url})
            job = await client.jobs.wait(job_id, raise_on_error=True)
            async with downloads:
                saved = await client.download(job, out / path.stem)
            assert len(saved.files) == 2 and saved.result_json is not None

        started = time.perf_counter()
        await asyncio.gather(*(one(path) for path in inputs))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "jobs": len(inputs)}


def sdk_upload(args: argparse.Namespace) -> dict[str, float]:
    """``upload_file``: reads the whole file into memory, then one PUT."""
    client = sdk_client(args)
    started = time.perf_counter()
    url = client.upload_file(args.file)
    assert url.startswith("https://")
    return {"seconds": time.perf_counter() - started}


async def ours_upload(args: argparse.Namespace) -> dict[str, float]:
    """``MusicAI.upload``: the file streamed from disk in 1 MiB reads."""
    from audioshake_async.musicai import MusicAI

    async with MusicAI(args.api_key, args.base_url, rate_limit=None) as client:
        await client.application()  # connection and TLS set up before the clock, as for a job
        started = time.perf_counter()
        url = await client.upload(args.file)
        seconds = time.perf_counter() - started
    assert url.startswith("https://")
    return {"seconds": seconds}


def run_contender(args: argparse.Namespace) -> None:
    """One measurement in this process; print its figures and this process's peak RSS."""
    # Imports before the clock, for every contender alike.
    import aiohttp  # noqa: F401
    import musicai_sdk  # noqa: F401
    import requests  # noqa: F401

    import audioshake_async.batch
    import audioshake_async.musicai  # noqa: F401

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        profiler.start()
    if args.task == "jobs" and args.contender == "ours":
        record = asyncio.run(ours_jobs(args))
    elif args.task == "jobs" and args.contender == "client":
        record = asyncio.run(client_jobs(args))
    elif args.task == "jobs":
        record = sdk_jobs(args)
    else:
        record = asyncio.run(ours_upload(args)) if args.contender == "ours" else sdk_upload(args)
    if args.profile:
        profiler.stop()
        sys.stderr.write(profiler.output_text(unicode=False, color=False, show_all=False))
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Cross-check: the kernel's high-water mark of this process image alone (ru_maxrss could
    # also count pages of a parent it was forked from).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                record["vm_hwm_mib"] = int(line.split()[1]) / 1024
    record["rss_after_imports_mib"] = rss_before
    print(json.dumps(record))


# --------------------------------------------------------------------------- driver


def write_input(path: pathlib.Path, seconds: float, seed: int, rate: int = 22_050) -> None:
    """A distinct stereo 16-bit WAV per seed (distinct inputs: no shared emulator work)."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        left = int(8000 * math.sin(i * (0.05 + seed * 0.0013)))
        right = int(6000 * math.sin(i * (0.031 + seed * 0.0007)))
        frames += struct.pack("<hh", left, right)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(bytes(frames))


def make_big(path: pathlib.Path, size: int) -> None:
    """The large upload source (random bytes: nothing compresses)."""
    block = os.urandom(MIB)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            piece = block[: min(MIB, size - written)]
            handle.write(piece)
            written += len(piece)


def child_env(info: dict[str, str]) -> dict[str, str]:
    """Environment of a contender: trust the emulator's CA, no proxy."""
    env = dict(os.environ)
    env["REQUESTS_CA_BUNDLE"] = info["ca_path"]  # requests (the SDK)
    env["SSL_CERT_FILE"] = info["ca_path"]  # OpenSSL's default paths (aiohttp)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def measure(
    args: argparse.Namespace,
    work: pathlib.Path,
    task: str,
    contender: str,
    *,
    threads: int = 0,
    extra: list[str] | None = None,
) -> dict[str, float]:
    """Start an emulator, run one contender against it, collect its figures and the
    emulator's request counts."""
    emulator_dir = work / "emulator"
    emulator_dir.mkdir(exist_ok=True)
    server = Server(args, emulator_dir)
    out = pathlib.Path(tempfile.mkdtemp(prefix="out-", dir=work))
    try:
        info = server.info
        command = [
            sys.executable, __file__, "_run", "--task", task, "--contender", contender,
            "--base-url", info["base_url"], "--api-key", info["api_key"],
            "--inputs", str(work / "inputs"), "--out", str(out), "--poll", str(args.poll),
            "--threads", str(threads), "--concurrency", str(args.concurrency),
            *(extra or []),
        ]  # fmt: skip
        if args.profile and contender != "sdk":
            command.append("--profile")
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=child_env(info)
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"{contender} {task} failed")
        if args.profile and done.stderr:
            sys.stderr.write(f"--- profile {task}/{contender}\n{done.stderr}")
        record: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        stats = server.stats()
        requests = stats["requests"]
        assert isinstance(requests, dict)
        record["api_requests"] = sum(requests.values())
        storage = stats["storage_requests"]
        assert isinstance(storage, dict)
        record["storage_requests"] = sum(storage.values())
        record["duplicate_jobs"] = float(stats["duplicate_jobs"])  # type: ignore[arg-type]
        return record
    finally:
        server.close()
        subprocess.run(["rm", "-rf", str(out), str(emulator_dir)], check=False)


def drive(args: argparse.Namespace) -> int:
    """Run every measurement, print the tables, write RESULTS.md when asked."""
    results: dict[str, list[dict[str, float]]] = {}
    # The machine is shared: the 1-minute load average around the run says how busy it was.
    args.load = [os.getloadavg()[0]]
    contenders = [("sdk", 0), ("ours", 0), ("client", 0)]
    if args.sdk_threads:
        contenders.insert(1, ("sdk", args.sdk_threads))
    with tempfile.TemporaryDirectory(prefix="bench-musicai-", dir=args.tmp) as tmp:
        work = pathlib.Path(tmp)
        (work / "inputs").mkdir()
        for i in range(args.jobs):
            # One content under distinct names by default: the emulator's stand-in DSP then
            # renders once, instead of taking CPU from the clients on this shared machine (a
            # real service processes elsewhere). Every job is still uploaded, run, downloaded.
            seed = i if args.distinct_inputs else 0
            write_input(work / "inputs" / f"track{i:04d}.wav", args.input_seconds, seed)
        for rep in range(args.reps):
            for contender, threads in contenders:
                label = f"{contender}-t{threads}" if threads else contender
                record = measure(args, work, "jobs", contender, threads=threads)
                results.setdefault(label, []).append(record)
                print(
                    f"rep {rep + 1}/{args.reps} jobs   {label:8} {record['seconds']:7.2f} s "
                    f"({args.jobs / record['seconds']:6.1f} jobs/s) "
                    f"API requests {record['api_requests']:.0f} "
                    f"peak RSS {record['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        big = work / "inputs-big" / "big.wav"
        big.parent.mkdir()
        make_big(big, args.size_mib * MIB)
        for rep in range(args.reps):
            for contender in ("sdk", "ours"):
                record = measure(args, work, "upload", contender, extra=["--file", str(big)])
                results.setdefault(f"upload-{contender}", []).append(record)
                print(
                    f"rep {rep + 1}/{args.reps} upload {args.size_mib} MiB {contender:4} "
                    f"{record['seconds']:6.2f} s peak RSS {record['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    args.load.append(os.getloadavg()[0])
    table, verdicts = render(results, args)
    print(table)
    if args.write:
        write_results(table, args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary(results, args), indent=1) + "\n")
    return 1 if args.check and not all(verdicts) else 0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _values(runs: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in runs]


def speedups(results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Median SDK wall time ÷ median wall time of each contender (a ratio of medians)."""
    sdk_seconds = _median(_values(results["sdk"], "seconds"))
    return {
        label: sdk_seconds / _median(_values(runs, "seconds"))
        for label, runs in results.items()
        if not label.startswith("upload-")
    }


def verdicts_of(
    results: dict[str, list[dict[str, float]]], args: argparse.Namespace
) -> tuple[list[bool], str, float]:
    """``([throughput ok, upload RSS ok], throughput verdict, our worst upload peak RSS)``."""
    speedup = speedups(results)["ours"]
    ours_peak = max(_values(results["upload-ours"], "peak_rss_mib"))
    verdicts = [speedup >= THROUGHPUT_TARGET, ours_peak < RSS_TARGET_MIB]
    verdict = "met" if verdicts[0] else "MISSED"
    if args.quick:
        # 20 jobs cannot amortise the ~0.4 s each job takes at best: the throughput target
        # is for the full run; --quick checks that everything works and the RSS target.
        verdicts[0] = True
        verdict = "not judged in --quick"
    return verdicts, verdict, ours_peak


def render(
    results: dict[str, list[dict[str, float]]], args: argparse.Namespace
) -> tuple[str, list[bool]]:
    """The Markdown tables and the verdict of each target."""
    names = {
        "sdk": "musicai-sdk 1.0.4, as shipped (one job after another)",
        f"sdk-t{args.sdk_threads}": f"musicai-sdk 1.0.4 from {args.sdk_threads} threads "
        "(caller-side concurrency, for reference)",
        "ours": "audioshake-async: batch engine + MusicAIProvider (the CLI path: journal, resume)",
        "client": "audioshake-async: MusicAI client, one coroutine per input (no journal)",
    }
    ratios = speedups(results)
    contents = (
        "distinct contents"
        if args.distinct_inputs
        else "one content under distinct names, so the emulator renders once"
    )
    lines = [
        f"{args.jobs} jobs end to end (upload, create, wait, download every result), "
        f"{args.delay:g} s emulated processing per job, {args.input_seconds:g} s stereo WAV "
        f"inputs ({contents}), "
        f"TLS emulator; first poll after {args.poll:g} s on both sides; "
        f"{args.reps} repetition(s): median (min–max); speed-up is the SDK's median wall time "
        "÷ this contender's.",
        "",
        "| contender | wall time s | jobs/s | speed-up vs SDK | API requests | "
        "storage requests | duplicate jobs | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, name in names.items():
        runs = results.get(key)
        if not runs:
            continue
        lines.append(
            f"| {name} | {fmt(_values(runs, 'seconds'), 2)} "
            f"| {fmt([args.jobs / r['seconds'] for r in runs], 1)} | {ratios[key]:.1f}x "
            f"| {fmt(_values(runs, 'api_requests'))} "
            f"| {fmt(_values(runs, 'storage_requests'))} "
            f"| {fmt(_values(runs, 'duplicate_jobs'))} "
            f"| {fmt(_values(runs, 'peak_rss_mib'))} |"
        )
    uploads = len(results["upload-ours"])
    lines += [
        "",
        f"Upload of one {args.size_mib} MiB file (`upload_file` vs `MusicAI.upload`), "
        f"{uploads} repetition(s): median (min–max):",
        "",
        "| contender | seconds | MiB/s | peak RSS MiB (ru_maxrss) | VmHWM MiB | "
        "RSS after imports MiB |",
        "|---|---|---|---|---|---|",
    ]
    for contender, name in (("sdk", "musicai-sdk 1.0.4"), ("ours", "audioshake-async")):
        runs = results[f"upload-{contender}"]
        lines.append(
            f"| {name} | {fmt(_values(runs, 'seconds'), 2)} "
            f"| {fmt([args.size_mib / r['seconds'] for r in runs])} "
            f"| {fmt(_values(runs, 'peak_rss_mib'))} | {fmt(_values(runs, 'vm_hwm_mib'))} "
            f"| {fmt(_values(runs, 'rss_after_imports_mib'))} |"
        )
    verdicts, verdict, ours_peak = verdicts_of(results, args)
    lines += [
        "",
        f"Targets: throughput >= {THROUGHPUT_TARGET:g}x the SDK {verdict} (batch engine "
        f"{ratios['ours']:.1f}x, client {ratios['client']:.1f}x); upload peak RSS flat "
        f"(< {RSS_TARGET_MIB} MiB) {'met' if verdicts[1] else 'MISSED'} ({ours_peak:.0f} MiB "
        f"for {args.size_mib} MiB, the highest of {uploads} run(s)).",
    ]
    return "\n".join(lines) + "\n", verdicts


def summary(
    results: dict[str, list[dict[str, float]]], args: argparse.Namespace
) -> dict[str, object]:
    """The headline figures, for ``--json`` (``run_all.py`` puts them in its summary)."""
    verdicts, verdict, ours_peak = verdicts_of(results, args)
    return {
        "jobs": args.jobs,
        "delay_s": args.delay,
        "reps": args.reps,
        "quick": bool(args.quick),
        "jobs_per_s": {
            label: [args.jobs / r["seconds"] for r in runs]
            for label, runs in results.items()
            if not label.startswith("upload-")
        },
        "speedup": speedups(results),
        "throughput_target": THROUGHPUT_TARGET,
        "throughput_verdict": verdict,
        "upload_mib": args.size_mib,
        "upload_peak_rss_mib": ours_peak,
        "upload_sdk_peak_rss_mib": max(_values(results["upload-sdk"], "peak_rss_mib")),
        "rss_target_mib": RSS_TARGET_MIB,
        "rss_verdict": "met" if verdicts[1] else "MISSED",
    }


def machine_info() -> str:
    """CPU, OS, Python and library versions, date."""
    import aiohttp

    cpu = "unknown CPU"
    try:
        match = re.search(r"model name\s*:\s*(.+)", pathlib.Path("/proc/cpuinfo").read_text())
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("musicai-sdk", "requests")
    )
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{os.cpu_count()} CPUs, {cpu}; Linux {platform.release()}; Python "
        f"{platform.python_version()}, aiohttp {aiohttp.__version__}, {versions}; {date}"
    )


def write_results(table: str, args: argparse.Namespace) -> None:
    """Replace this benchmark's section of RESULTS.md (other sections are kept)."""
    mode = "quick" if args.quick else "full"
    title = "Music.AI vs musicai-sdk" + (" (quick)" if args.quick else "")
    command = "python benchmarks/bench_musicai.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    section = (
        f"<!-- {SECTION}:{mode}:start -->\n"
        f"## {title}\n\n"
        f"Machine: {machine_info()}. Load average (1 min) at start and end: "
        f"{args.load[0]:.2f}, {args.load[1]:.2f} (other work shares this machine).\n"
        f"Command: `{command.strip()}`\n\n"
        "Each contender runs in its own process against a fresh TLS Music.AI emulator "
        "(`audioshake_async.emulator.musicai`, its own process too); peak RSS is the "
        "contender's `ru_maxrss` (interpreter and imports included). The SDK is pointed at the "
        "emulator by its `base_url` attribute and trusts its CA through `REQUESTS_CA_BUNDLE`; "
        "our client through `SSL_CERT_FILE`. Our contenders are CPU-bound here (client, "
        "emulator and asyncio's TLS share 2 CPUs), the SDK is latency-bound, so the ratio "
        "falls when other work loads the machine: runs at load averages of 3 to 5 measured "
        "9.7x to 13.7x for the batch engine. The upload runs as many times as the jobs "
        f"(`--reps {args.reps}`).\n\n"
        f"{table}"
        f"<!-- {SECTION}:{mode}:end -->\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(
        rf"<!-- {SECTION}:{mode}:start -->.*?<!-- {SECTION}:{mode}:end -->\n", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def _default_tmp() -> str | None:
    shm = pathlib.Path("/dev/shm")
    try:
        stat = os.statvfs(shm)
        if shm.is_dir() and stat.f_bavail * stat.f_frsize > 4 * 1024**3:
            return str(shm)
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    """Driver, or one of the subprocess roles (``_server``, ``_run``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_server":
        parser = argparse.ArgumentParser()
        parser.add_argument("--delay", type=float, required=True)
        parser.add_argument("--workdir", required=True)
        run_server(parser.parse_args(argv[1:]))
        return 0
    if argv and argv[0] == "_run":
        parser = argparse.ArgumentParser()
        for name in ("--task", "--contender", "--base-url", "--api-key", "--inputs", "--out"):
            parser.add_argument(name, required=True)
        parser.add_argument("--file")
        parser.add_argument("--poll", type=float, required=True)
        parser.add_argument("--threads", type=int, default=0)
        parser.add_argument("--concurrency", type=int, default=8)
        parser.add_argument("--profile", action="store_true")
        run_contender(parser.parse_args(argv[1:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 jobs, 64 MiB upload")
    parser.add_argument("--jobs", type=int, help="jobs per throughput run (default 200)")
    parser.add_argument("--size-mib", type=int, help="size of the upload (default 1024)")
    parser.add_argument(
        "--reps", type=int, default=1, help="repetitions of the throughput and upload runs"
    )
    parser.add_argument("--delay", type=float, default=0.2, help="emulated processing seconds")
    parser.add_argument("--poll", type=float, default=0.1, help="first poll interval, both sides")
    parser.add_argument("--input-seconds", type=float, default=1.0, help="length of each input")
    parser.add_argument("--concurrency", type=int, default=8, help="our uploads at once")
    parser.add_argument(
        "--distinct-inputs",
        action="store_true",
        help="a different content per input (the emulator renders each: more server CPU)",
    )
    parser.add_argument(
        "--sdk-threads", type=int, default=0, help="also run the SDK from N threads (reference)"
    )
    parser.add_argument("--tmp", default=_default_tmp(), help="work directory (default /dev/shm)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--profile", action="store_true", help="pyinstrument our contender")
    parser.add_argument("--json", default=None, help="also write the headline figures here")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (20 if args.quick else 200)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    return drive(args)


if __name__ == "__main__":
    raise SystemExit(main())
