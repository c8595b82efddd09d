"""Catalogs in object storage: API requests per item and items/s for file inputs vs s3:// inputs
at the documented 60 requests/s, and one large output streamed CDN -> S3 vs to disk.

1. Batch: the same catalog (tiny WAVs) as local files and as objects in a bucket of moto's S3
   server, each run through ``client.batch`` against a fresh emulator at its documented 60
   requests/s (the client at its default 60/s too). Requests are counted by the emulator (the
   side the account limit counts); s3:// inputs are presigned, so there is no ``POST /assets``.
   The emulator fetches each presigned URL from the S3 server, like the service would.
2. Transfer: one output of ``--size-mib`` (1 GiB) from a loopback CDN, ``write_output`` into an
   ``S3Sink`` (a streamed multipart upload) vs ``download`` to disk (``.part`` file, rename).
   The S3 endpoint is a minimal loopback server speaking the S3 multipart protocol that counts
   and discards the bytes: moto's Python server (fine for correctness) would measure itself,
   not the client. Every contender is its own subprocess reporting its own peak RSS (VmHWM).

    python benchmarks/bench_s3.py            # 1,200 items, 1 GiB, 3 repetitions
    python benchmarks/bench_s3.py --quick    # 60 items, 64 MiB, 1 repetition
    python benchmarks/bench_s3.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_transfer
from _common import (
    MIB,
    ROOT,
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

HERE = pathlib.Path(__file__).resolve().parent
REQUESTS_TARGET = 1.05
THROUGHPUT_TARGET = 0.90
RSS_TARGET_MIB = 100
ACCESS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


# --------------------------------------------------------------------------- servers


def run_moto() -> None:
    """moto's S3 server on a free port; prints the port, runs until killed."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    while True:
        time.sleep(3600)


HEAD_MAX = 16384


class _DiscardProtocol(asyncio.BufferedProtocol):
    """One connection of the S3 endpoint: HTTP/1.1 requests with a Content-Length body, read
    into one reused buffer (``recv_into``: no allocation per read) and counted, not kept."""

    def __init__(self, received: dict[str, int]) -> None:
        self.received = received
        self.buffer = bytearray(MIB)
        self.head = bytearray()
        self.remaining = 0  # body bytes still to come; 0: reading a request's head
        self.request: tuple[str, str] = ("", "")
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        view = memoryview(self.buffer)[:nbytes]
        while view:
            if self.remaining:
                step = min(self.remaining, len(view))
                self.remaining -= step
                self.count(step)
                view = view[step:]
                if not self.remaining:
                    self.respond()
                continue
            # A request's head (a few hundred bytes): only it is copied, never the body.
            seen = len(self.head)
            self.head += view[:HEAD_MAX]
            end = self.head.find(b"\r\n\r\n", max(0, seen - 3))
            if end < 0:
                if len(self.head) > HEAD_MAX:
                    raise ValueError("request head too long")
                view = view[HEAD_MAX:]
                continue
            view = view[end + 4 - seen :]
            lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
            self.head.clear()
            method, target, _ = lines[0].split(" ", 2)
            fields = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
            self.request = (method, target)
            self.remaining = int(fields.get("content-length", "0"))
            if not self.remaining:
                self.respond()

    def count(self, size: int) -> None:
        method, target = self.request
        if method == "PUT":
            key = target.split("?", 1)[0]
            self.received[key] = self.received.get(key, 0) + size

    def respond(self) -> None:
        method, target = self.request
        path, _, query = target.partition("?")
        key = path.split("/", 2)[-1]
        body = b""
        headers = ""
        if method == "POST" and "uploads" in query:
            body = (
                f"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>{key}</Key>"
                "<UploadId>u1</UploadId></InitiateMultipartUploadResult>"
            ).encode()
        elif method == "POST" and "uploadId" in query:
            body = (
                f"<CompleteMultipartUploadResult><Bucket>b</Bucket><Key>{key}</Key>"
                '<ETag>"done"</ETag></CompleteMultipartUploadResult>'
            ).encode()
        elif method == "PUT":
            part = dict(p.partition("=")[::2] for p in query.split("&")).get("partNumber", "0")
            headers = f'ETag: "p{part}"\r\n'
        elif method == "GET" and path == "/_stats":
            body = json.dumps(self.received).encode()
        status = "204 No Content" if method == "DELETE" else "200 OK"
        head = f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        assert self.transport is not None
        self.transport.write(head.encode() + body)


def run_sink() -> None:
    """A minimal S3 endpoint: multipart uploads and PUTs whose bytes are counted, not kept.

    A bare asyncio protocol rather than an aiohttp app: it is the benchmark's harness, and on
    2 shared cores every CPU second it spends receiving is one the client under test lacks
    (aiohttp's server spent ~0.5 s per GiB, this one ~0.1 s).
    """
    received: dict[str, int] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _DiscardProtocol(received), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def server(kind: str, *extra: str, pids: list[int] | None = None) -> Iterator[str]:
    """Run ``bench_s3.py server KIND`` (or bench_transfer's) in its own process; yield its
    first line of output (its pid is appended to ``pids``)."""
    script = HERE / ("bench_transfer.py" if kind == "transfer" else "bench_s3.py")
    command = [
        sys.executable,
        str(script),
        *(["_server"] if kind == "transfer" else ["server", kind]),
    ]
    # moto's server logs every request (presigned URLs included) on stderr: not wanted here.
    quiet = subprocess.DEVNULL if kind == "moto" else None
    process = subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=quiet, text=True, cwd=ROOT
    )
    if pids is not None:
        pids.append(process.pid)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(30)


# --------------------------------------------------------------------------- child processes


async def child_batch(args: argparse.Namespace) -> dict[str, Any]:
    from audioshake_async import AudioShake, Target
    from audioshake_async.storage.s3 import S3Settings

    inputs = args.inputs_list
    targets = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
    settings = S3Settings(endpoint=args.s3) if args.s3 else None
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    async with AudioShake(args.key, args.api) as client:
        async for result in client.batch(inputs, targets=targets, out_dir=args.out, s3=settings):
            statuses[result.status] = statuses.get(result.status, 0) + 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "statuses": statuses, "rss_mib": peak_rss_mib()}


async def child_transfer(args: argparse.Namespace) -> dict[str, Any]:
    from audioshake_async import AudioShake
    from audioshake_async.storage.s3 import S3Settings, S3Sink, S3Stores

    async with AudioShake(bench_transfer.API_KEY, args.api) as client:
        task = await client.tasks.get("bench")
        output = task.targets[0].output[0]
        started = time.perf_counter()
        cpu_started = time.process_time()
        if args.to == "disk":
            (path,) = await client.download(task, args.out, checksum=args.checksum)
            size = path.stat().st_size
            path.unlink()
        else:
            settings = S3Settings(endpoint=args.s3)
            if args.part_mib:
                settings = S3Settings(
                    endpoint=args.s3, part_size=args.part_mib * MIB, parts_in_flight=args.parts
                )
            sink = S3Sink("s3://bench/stems", S3Stores(settings))
            writer = await sink.open("song/vocals.wav", checksum=args.checksum)
            size = (await client.write_output(task, output, writer)).size
        seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"bytes": size, "seconds": seconds, "cpu_s": cpu, "rss_mib": peak_rss_mib()}


# --------------------------------------------------------------------------- driver


def put_catalog(endpoint: str, bucket: str, count: int, source: pathlib.Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_keys())
    client.create_bucket(Bucket=bucket)
    body = source.read_bytes()
    for index in range(count):
        client.put_object(Bucket=bucket, Key=f"catalog/track-{index:06d}.wav", Body=body)


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": ACCESS["AWS_SECRET_ACCESS_KEY"],
        "region_name": ACCESS["AWS_REGION"],
    }


def measure_batch(count: int, tmp: pathlib.Path) -> dict[str, dict[str, Any]]:
    """One run of each input kind, each against a fresh emulator at 60 requests/s."""
    env = {**os.environ, **ACCESS}
    source = write_tiny_wav(tmp / "source.wav")
    files = tmp / "files"
    files.mkdir()
    paths = []
    for index in range(count):
        path = files / f"track-{index:06d}.wav"
        os.link(source, path)
        paths.append(str(path))
    (tmp / "file.txt").write_text("\n".join(paths))
    out: dict[str, dict[str, Any]] = {}
    with server("moto") as port:
        endpoint = f"http://127.0.0.1:{port}"
        put_catalog(endpoint, "catalog", count, source)
        (tmp / "s3.txt").write_text("s3://catalog/catalog/")
        for kind in ("file", "s3"):
            with emulator_process(rate_limit=60, delay=0.5) as emu:
                progress(f"batch of {count} {kind} inputs at 60 req/s")
                argv = [str(HERE / "bench_s3.py"), "child", "batch", "--api", emu.base_url]
                argv += ["--key", emu.api_key, "--inputs", str(tmp / f"{kind}.txt")]
                argv += ["--out", str(tmp / f"out-{kind}")]
                if kind == "s3":
                    argv += ["--s3", endpoint]
                record = run_child(argv, env=env)
                record["requests"] = emu.stats()["requests"]
                record.pop("stderr", None)
                out[kind] = record
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_transfer(size: int, reps: int, tmp: pathlib.Path) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"disk": [], "s3": []}
    env = {**os.environ, **ACCESS}
    pids: list[int] = []
    with (
        server("transfer", "--size", str(size), pids=pids) as ports,
        server("sink", pids=pids) as sink_port,
    ):
        api = f"http://127.0.0.1:{json.loads(ports)['api']}"
        s3 = f"http://127.0.0.1:{sink_port}"
        for rep in range(reps):
            for to in ("disk", "s3"):  # alternating, so load drifts hit both
                progress(f"transfer of {size // MIB} MiB to {to}, rep {rep + 1}/{reps}")
                argv = [str(HERE / "bench_s3.py"), "child", "transfer", "--to", to]
                argv += ["--api", api, "--s3", s3, "--out", str(tmp)]
                harness = sum(cpu_seconds(pid) for pid in pids)
                record = run_child(argv, env=env)
                record["harness_cpu_s"] = sum(cpu_seconds(pid) for pid in pids) - harness
                record.pop("stderr", None)
                if record["bytes"] != size:
                    raise RuntimeError(f"{to}: {record['bytes']} bytes of {size}")
                runs[to].append(record)
    return runs


def render(
    batch: dict[str, dict[str, Any]],
    transfer: dict[str, list[dict[str, Any]]],
    count: int,
    size: int,
    argv: list[str],
    info: dict[str, str],
    load_end: str,
) -> str:
    def per_item(kind: str) -> float:
        return sum(batch[kind]["requests"].values()) / count

    lines = [
        "## Catalogs in object storage (s3:// inputs and outputs)",
        "",
        machine_line(info, load_end),
        f"Command: `{command_line('benchmarks/bench_s3.py', argv)}`. Same catalog ({count:,} "
        "tiny WAVs, targets vocals + drums) as local files and as objects in moto's S3 server; "
        "a fresh emulator at its documented 60 requests/s for each run; requests counted by "
        "the emulator.",
        "",
        "| inputs | API requests/item | POST /assets | items/s at 60 req/s | ceiling 60 / "
        "(requests/item) | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("file", "local files (upload)"), ("s3", "s3:// (presigned URL)")):
        record = batch[kind]
        rate = count / record["seconds"]
        lines.append(
            f"| {label} | {per_item(kind):.2f} | {record['requests'].get('POST /assets', 0):,} "
            f"| {rate:.1f} | {60 / per_item(kind):.1f} | {record['rss_mib']:.0f} MiB |"
        )
    ok = per_item("s3") <= REQUESTS_TARGET
    lines += [
        "",
        f"Target: at most {REQUESTS_TARGET} API requests per item with s3:// inputs: "
        f"{'met' if ok else 'MISSED'} ({per_item('s3'):.2f}; files {per_item('file'):.2f}).",
        "",
        f"### One {size // MIB:,} MiB output: CDN -> S3 (multipart) vs CDN -> disk "
        f"({len(transfer['disk'])} run(s) each, alternating)",
        "",
        "| destination | MiB/s | client CPU s/GiB | CDN + S3 endpoint CPU s/GiB | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    rates = {k: [r["bytes"] / MIB / r["seconds"] for r in v] for k, v in transfer.items()}
    for key, label in (
        ("disk", "disk (`download`: .part + rename)"),
        ("s3", "S3 (`write_output` into `S3Sink`)"),
    ):
        rss = [r["rss_mib"] for r in transfer[key]]
        gib = [r["bytes"] / (1024 * MIB) for r in transfer[key]]
        client = [r["cpu_s"] / g for r, g in zip(transfer[key], gib, strict=True)]
        harness = [r["harness_cpu_s"] / g for r, g in zip(transfer[key], gib, strict=True)]
        lines.append(
            f"| {label} | {fmt(rates[key])} | {fmt(client, 2)} | {fmt(harness, 2)} | {fmt(rss)} |"
        )
    share = (
        sorted(rates["s3"])[len(rates["s3"]) // 2] / sorted(rates["disk"])[len(rates["disk"]) // 2]
    )
    rss_max = max(r["rss_mib"] for r in transfer["s3"])
    lines += [
        "",
        f"Targets: S3 throughput >= {THROUGHPUT_TARGET:.0%} of disk: "
        f"{'met' if share >= THROUGHPUT_TARGET else 'MISSED'} ({share:.0%}); S3 peak RSS < "
        f"{RSS_TARGET_MIB} MiB: {'met' if rss_max < RSS_TARGET_MIB else 'MISSED'} "
        f"({rss_max:.0f} MiB). Same work on both sides: each computes the output's SHA-256 "
        "while streaming (the batch default, `checksum=True`). S3: 5 MiB parts, 2 in flight, "
        "2 MiB read batches (disk: 4 MiB), SigV4-signed payloads (obstore hashes each part "
        "again to sign it: plain http). The S3 endpoint is a loopback asyncio protocol "
        "speaking the multipart protocol that reads every byte into one reused buffer and "
        "discards it: it is the harness, kept lean so that it measures the client's "
        "streaming, not a store. Client CPU is the client process's (all threads, kernel "
        "time included: the disk path's page-cache writes count there); the harness column "
        "is the CDN's and the S3 endpoint's. On 2 shared cores the S3 path keeps three "
        "processes busy where the disk path keeps two and the kernel.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:
        {"moto": run_moto, "sink": run_sink}[argv[1]]()
        return 0
    if argv[:1] == ["child"]:
        parser = argparse.ArgumentParser()
        parser.add_argument("what", choices=["batch", "transfer"])
        for name in ("--api", "--out"):
            parser.add_argument(name, required=True)
        parser.add_argument("--key", default=bench_transfer.API_KEY)
        parser.add_argument("--inputs")
        parser.add_argument("--s3")
        parser.add_argument("--to", choices=["disk", "s3"])
        parser.add_argument("--part-mib", type=int, default=0)
        parser.add_argument("--parts", type=int, default=3)
        parser.add_argument("--checksum", action=argparse.BooleanOptionalAction, default=True)
        args = parser.parse_args(argv[1:])
        if args.inputs:
            args.inputs_list = pathlib.Path(args.inputs).read_text().split()
        run = child_batch if args.what == "batch" else child_transfer
        print(json.dumps(asyncio.run(run(args))), flush=True)
        from audioshake_async.cli.main import exit_process

        exit_process(0)  # as the CLI does: obstore 0.12 can abort at interpreter exit
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 items, 64 MiB, 1 repetition")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    # Enough items that the run is mostly the steady state (the last tasks' wait is a tail).
    count = args.items or (60 if args.quick else 1200)
    size = (args.size_mib or (64 if args.quick else 1024)) * MIB
    reps = args.reps or (1 if args.quick else 3)
    info = machine_info()  # the load average at the start (machine_line adds the end's)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        batch = measure_batch(count, pathlib.Path(tmp))
        transfer = measure_transfer(size, reps, pathlib.Path(tmp))
    text = render(batch, transfer, count, size, argv, info, loadavg())
    print(text)
    if args.write:
        write_section("s3", text, results_file(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
