"""Peak RSS and throughput of a large upload and download: audioshake-async vs bare aiohttp.

Every contender runs in its own subprocess and reports its own peak RSS, ``VmHWM`` of
``/proc/self/status`` read in the child after the transfer (``_common.peak_rss_mib``: unlike
``ru_maxrss`` it does not count the pages of the driver the child was forked from); the
loopback server runs in a process of its own too,
with two ports: an "API" (``POST /assets``, ``GET /tasks/bench``) and a "CDN" serving the output
file, so the library downloads from another origin exactly as in production.

Contenders:
- ``lib`` upload: ``AudioShake.assets.upload(path)`` (streamed multipart, retries armed);
- ``bare`` upload: ``aiohttp.FormData`` with an open file, one ``session.post``;
- ``lib`` download: ``AudioShake.download(task, dir)`` (atomic ``.part`` file, Range resume);
- ``bare`` download: ``session.get`` + ``iter_chunked(1 MiB)`` into a file;
- ``curl`` upload and download: the machine's ``curl`` (``-F file=@...`` and ``-o file``),
  timed by curl itself (``%{time_total}``); its peak RSS is GNU ``time``'s ``%M`` (curl forked
  from ``time``, not from Python, whose pages a forked child would count as its own). Skipped
  when ``curl`` is not installed; RSS shown as nan without ``/usr/bin/time``.

    python benchmarks/bench_transfer.py            # 1 GiB, 5 repetitions
    python benchmarks/bench_transfer.py --quick    # 64 MiB, 1 repetition (CI)
    python benchmarks/bench_transfer.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import fmt, loadavg, machine_info, machine_line, peak_rss_mib

MIB = 1 << 20
HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
API_KEY = "bench-key"
RSS_TARGET_MIB = 100
THROUGHPUT_TARGET = 0.90
BLOCK = os.urandom(MIB)  # the repeated content of the served file and of the upload source


# --------------------------------------------------------------------------- server process


def run_server(size: int) -> None:
    """Serve the API and the CDN on two ephemeral ports; print them, run until killed."""
    from aiohttp import web

    async def upload(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        part = await reader.next()
        received = 0
        while chunk := await part.read_chunk(MIB):  # type: ignore[union-attr]
            received += len(chunk)
        name = part.filename  # type: ignore[union-attr]
        return web.json_response({"id": "asset1", "name": name, "format": "wav", "size": received})

    cdn_port: list[int] = []

    async def get_task(request: web.Request) -> web.StreamResponse:
        link = f"http://127.0.0.1:{cdn_port[0]}/files/output.wav?sig=x"
        return web.json_response(
            {
                "id": "bench",
                "targets": [
                    {
                        "id": "t",
                        "model": "vocals",
                        "status": "completed",
                        "output": [{"name": "vocals", "format": "wav", "link": link}],
                    }
                ],
            }
        )

    async def serve_file(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Accept-Ranges": "bytes"})
        response.content_length = size
        await response.prepare(request)
        sent = 0
        while sent < size:
            piece = BLOCK if size - sent >= MIB else BLOCK[: size - sent]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def main() -> None:
        cdn = web.Application()
        cdn.router.add_get("/files/output.wav", serve_file)
        api = web.Application(client_max_size=4 * 1024**3)
        api.router.add_post("/assets", upload)
        api.router.add_get("/tasks/bench", get_task)
        runners = []
        ports = []
        for app in (api, cdn):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        cdn_port.append(ports[1])
        print(json.dumps({"api": ports[0], "cdn": ports[1]}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- contender processes


# Each contender times the transfer itself: session setup and teardown, and (for the library's
# download) reading the task that holds the link, stay outside the clock for every contender.
Outcome = tuple[int, float, "pathlib.Path | None"]  # bytes, seconds, file to delete


async def lib_upload(args: argparse.Namespace) -> Outcome:
    from audioshake_async import AudioShake

    async with AudioShake(API_KEY, args.api) as client:
        started = time.perf_counter()
        asset = await client.assets.upload(args.file)
        seconds = time.perf_counter() - started
    assert asset.id == "asset1"
    return int(args.size), seconds, None


async def bare_upload(args: argparse.Namespace) -> Outcome:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        with open(args.file, "rb") as handle:  # noqa: ASYNC230
            form = aiohttp.FormData()
            form.add_field("file", handle, filename="source.wav", content_type="audio/wav")
            async with session.post(
                f"{args.api}/assets", data=form, headers={"x-api-key": API_KEY}
            ) as response:
                body = await response.json()
        seconds = time.perf_counter() - started
    assert body["size"] == args.size, body
    return int(args.size), seconds, None


async def lib_download(args: argparse.Namespace) -> Outcome:
    from audioshake_async import AudioShake

    async with AudioShake(API_KEY, args.api) as client:
        task = await client.tasks.get("bench")
        started = time.perf_counter()
        (path,) = await client.download(task, args.out)
        seconds = time.perf_counter() - started
    return path.stat().st_size, seconds, path


async def bare_download(args: argparse.Namespace) -> Outcome:
    import aiohttp

    link = f"{args.cdn}/files/output.wav?sig=x"
    target = pathlib.Path(args.out) / "vocals.wav"
    size = 0
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.get(link) as response:
            response.raise_for_status()
            with open(target, "wb") as handle:  # noqa: ASYNC230
                async for chunk in response.content.iter_chunked(MIB):
                    handle.write(chunk)
                    size += len(chunk)
        seconds = time.perf_counter() - started
    return size, seconds, target


CURL = shutil.which("curl")
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def _run_curl(command: list[str], workdir: str) -> tuple[dict[str, str], float]:
    """Run curl; return its ``-w`` variables and its own peak RSS in KiB (nan if unknown).

    A child forked from this Python process would report this process's pages in its
    ``ru_maxrss`` (the peak before ``exec`` counts), so curl is started by GNU ``time``.
    """
    rss_file = pathlib.Path(workdir) / "curl-maxrss.txt"
    prefix = [GNU_TIME, "-f", "%M", "-o", str(rss_file)] if GNU_TIME else []
    done = subprocess.run(prefix + command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curl exited with {done.returncode}: {done.stderr}")
    values = dict(item.split("=", 1) for item in done.stdout.split())
    if values["code"] != "200":
        raise RuntimeError(f"curl got HTTP {values['code']}")
    peak_kib = float("nan")
    if GNU_TIME:
        peak_kib = float(rss_file.read_text().split()[-1])
        rss_file.unlink()
    return values, peak_kib


def curl_upload(args: argparse.Namespace) -> tuple[int, float, None, float]:
    body = pathlib.Path(args.out) / "curl-upload.json"
    values, peak_kib = _run_curl(
        [
            str(CURL), "-sS", "-o", str(body), "-H", f"x-api-key: {API_KEY}",
            "-H", "Expect:",  # no 100-continue round trip, as the Python clients
            "-F", f"file=@{args.file};type=audio/wav;filename=source.wav",
            "-w", "code=%{http_code} seconds=%{time_total} sent=%{size_upload}",
            f"{args.api}/assets",
        ],
        args.out,
    )  # fmt: skip
    received = json.loads(body.read_text())["size"]
    body.unlink()
    assert received == args.size, received
    return int(received), float(values["seconds"]), None, peak_kib


def curl_download(args: argparse.Namespace) -> tuple[int, float, pathlib.Path, float]:
    target = pathlib.Path(args.out) / "curl-vocals.wav"
    values, peak_kib = _run_curl(
        [
            str(CURL), "-sS", "-o", str(target),
            "-w", "code=%{http_code} seconds=%{time_total} size=%{size_download}",
            f"{args.cdn}/files/output.wav?sig=x",
        ],
        args.out,
    )  # fmt: skip
    return int(values["size"]), float(values["seconds"]), target, peak_kib


CONTENDERS = {
    ("upload", "bare"): bare_upload,
    ("upload", "lib"): lib_upload,
    ("download", "bare"): bare_download,
    ("download", "lib"): lib_download,
}
if CURL:
    CONTENDERS[("upload", "curl")] = curl_upload
    CONTENDERS[("download", "curl")] = curl_download
NAMES = {"bare": "bare aiohttp", "lib": "audioshake-async", "curl": "curl (C, libcurl)"}


def run_contender(args: argparse.Namespace) -> None:
    """One transfer in this process; print seconds, bytes and this process's peak RSS."""
    if args.contender == "curl":
        # curl is the contender: this process only starts it and reads its rusage.
        size, seconds, written, peak_kib = CONTENDERS[(args.operation, "curl")](args)
        if written is not None:
            written.unlink()
        assert size == args.size, (size, args.size)
        print(json.dumps({"seconds": seconds, "bytes": size, "peak_rss_mib": peak_kib / 1024}))
        return
    func = CONTENDERS[(args.operation, args.contender)]
    # Imports happen before the clock starts, for every contender alike.
    import aiohttp  # noqa: F401
    import anyio._backends._asyncio  # noqa: F401  (anyio loads it lazily on first use)

    import audioshake_async  # noqa: F401

    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        profiler.start()
    size, seconds, written = asyncio.run(func(args))
    if written is not None:
        written.unlink()
    if args.profile:
        profiler.stop()
        sys.stderr.write(profiler.output_text(unicode=False, color=False, show_all=False))
    assert size == args.size, (size, args.size)
    # VmHWM: this process's own peak (ru_maxrss would count the driver's pages from the fork).
    print(json.dumps({"seconds": seconds, "bytes": size, "peak_rss_mib": peak_rss_mib()}))


# --------------------------------------------------------------------------- driver


def make_source(path: pathlib.Path, size: int) -> None:
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            piece = BLOCK[: min(MIB, size - written)]
            handle.write(piece)
            written += len(piece)


def drive(args: argparse.Namespace) -> int:
    args.info = machine_info()  # the load average at the start, with the machine
    size = args.size_mib * MIB
    reps = args.reps
    results: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="bench-transfer-", dir=args.tmp) as tmp:
        workdir = pathlib.Path(tmp)
        source = workdir / "source.wav"
        out = workdir / "out"
        out.mkdir()
        make_source(source, size)
        server = subprocess.Popen(
            [sys.executable, __file__, "_server", "--size", str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            ports = json.loads(server.stdout.readline())
            api = f"http://127.0.0.1:{ports['api']}"
            cdn = f"http://127.0.0.1:{ports['cdn']}"
            for rep in range(reps):
                # Alternate contenders inside each repetition so drift hits both alike.
                for (operation, contender), _ in CONTENDERS.items():
                    command = [
                        sys.executable, __file__, "_run",
                        "--operation", operation, "--contender", contender,
                        "--api", api, "--cdn", cdn, "--file", str(source), "--out", str(out),
                        "--size", str(size),
                    ]  # fmt: skip
                    if args.profile and contender == "lib":
                        command.append("--profile")
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        sys.stderr.write(done.stdout + done.stderr)
                        return 1
                    if args.profile and done.stderr:
                        sys.stderr.write(f"--- profile {operation}/{contender}\n{done.stderr}")
                    record = json.loads(done.stdout.strip().splitlines()[-1])
                    results[(operation, contender)].append(record)
                    print(
                        f"rep {rep + 1}/{reps} {operation:8} {contender:4} "
                        f"{size / MIB / record['seconds']:8.1f} MiB/s "
                        f"peak RSS {record['peak_rss_mib']:6.1f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait(10)
    table = render(results, size, reps)
    print(table)
    if args.write:
        write_results(table, args)
    lib_peak = max(r["peak_rss_mib"] for op in ("upload", "download") for r in results[(op, "lib")])
    if args.check and lib_peak >= RSS_TARGET_MIB:
        print(f"FAIL: peak RSS {lib_peak:.1f} MiB >= {RSS_TARGET_MIB} MiB", file=sys.stderr)
        return 1
    return 0


def render(results: dict[tuple[str, str], list[dict[str, float]]], size: int, reps: int) -> str:
    lines = [
        f"Transfer of {size // MIB} MiB, {reps} repetition(s); median (min–max).",
        "",
        "| operation | contender | throughput MiB/s | peak RSS MiB | throughput vs bare |",
        "|---|---|---|---|---|",
    ]
    for operation in ("upload", "download"):
        bare_rates = [size / MIB / r["seconds"] for r in results[(operation, "bare")]]
        for contender in ("bare", "lib", "curl"):
            runs = results.get((operation, contender), [])
            if not runs:
                continue
            rates = [size / MIB / r["seconds"] for r in runs]
            rss = [r["peak_rss_mib"] for r in runs]
            ratio = statistics.median(rates) / statistics.median(bare_rates)
            name = NAMES[contender]
            lines.append(f"| {operation} | {name} | {fmt(rates)} | {fmt(rss, 1)} | {ratio:.0%} |")
    verdicts = []
    for operation in ("upload", "download"):
        lib = results[(operation, "lib")]
        bare = results[(operation, "bare")]
        rss_ok = max(r["peak_rss_mib"] for r in lib) < RSS_TARGET_MIB
        ratio = statistics.median(r["seconds"] for r in bare) / statistics.median(
            r["seconds"] for r in lib
        )
        rate_ok = ratio >= THROUGHPUT_TARGET
        verdicts.append(
            f"{operation}: peak RSS < {RSS_TARGET_MIB} MiB {'met' if rss_ok else 'MISSED'}, "
            f"throughput >= {THROUGHPUT_TARGET:.0%} of bare {'met' if rate_ok else 'MISSED'}"
        )
    lines += ["", "Targets: " + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


RSS_NOTE = (
    "Peak RSS is the contender process's `VmHWM` (the peak of its own address space, read in "
    "the child after the transfer; interpreter and imports included), not `ru_maxrss`, which "
    "would also count the pages of the driver it was forked from; curl's is GNU `time`'s `%M`. "
    "Client and server run in separate processes."
)


def write_results(table: str, args: argparse.Namespace) -> None:
    mode = "quick" if args.quick else "full"
    command = "python benchmarks/bench_transfer.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    section = (
        f"<!-- bench_transfer:{mode}:start -->\n"
        f"## Transfer benchmark ({mode})\n\n"
        f"{machine_line(args.info, loadavg())}\n"
        f"Command: `{command.strip()}`\n\n"
        f"{RSS_NOTE}\n\n"
        f"{table}"
        f"<!-- bench_transfer:{mode}:end -->\n"
    )
    header = (
        "# Benchmark results\n\n"
        "Written by `benchmarks/bench_transfer.py --write` (each mode replaces its own "
        "section). Targets: peak RSS under 100 MiB and throughput at least 90% of bare "
        "aiohttp, for a 1 GiB upload and download over loopback. Peak RSS is each contender "
        "process's own `VmHWM` (see each section), not `ru_maxrss`.\n\n"
    )  # (notes added by hand below the header are kept: only the marked sections change)
    text = RESULTS.read_text() if RESULTS.exists() else header
    pattern = re.compile(
        rf"<!-- bench_transfer:{mode}:start -->.*?<!-- bench_transfer:{mode}:end -->\n", re.S
    )
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else (text.rstrip("\n") + "\n\n" + section)
    )
    RESULTS.write_text(text)


def _default_tmp() -> str | None:
    shm = pathlib.Path("/dev/shm")
    try:
        if shm.is_dir() and os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize > 3 * 1024**3:
            return str(shm)
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_server":
        parser = argparse.ArgumentParser()
        parser.add_argument("--size", type=int, required=True)
        run_server(parser.parse_args(argv[1:]).size)
        return 0
    if argv and argv[0] == "_run":
        parser = argparse.ArgumentParser()
        for name in ("--operation", "--contender", "--api", "--cdn", "--file", "--out"):
            parser.add_argument(name, required=True)
        parser.add_argument("--size", type=int, required=True)
        parser.add_argument("--profile", action="store_true")
        run_contender(parser.parse_args(argv[1:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 repetition (for CI)")
    parser.add_argument("--size-mib", type=int, default=None, help="transfer size (default 1024)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument(
        "--tmp",
        default=_default_tmp(),
        help="where the source and downloaded files go (default: /dev/shm when it exists, so "
        "disk write-back does not add noise to a comparison of client overhead)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print a pyinstrument profile of the library runs (pip install pyinstrument)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the library's peak RSS reaches 100 MiB (throughput is reported, not "
        "gated: loopback timings on a shared CI machine are too noisy to gate on)",
    )
    args = parser.parse_args(argv)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.reps = args.reps or (1 if args.quick else 5)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
