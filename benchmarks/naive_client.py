"""A naive AudioShake batch client: the shape of public example scripts, as a benchmark peer.

``requests`` + ``ThreadPoolExecutor(16)``, one thread per item, every item submitted up front:
upload (``POST /assets`` multipart), ``POST /tasks``, then ``GET /tasks/{id}`` every ``--poll``
seconds until every target is terminal, then each output downloaded with ``requests.get``
(streamed to a file). Module-level ``requests`` calls, as those scripts make them (a new
connection per request); no rate limiter, no retries, no journal.

Generous to the naive client on purpose: it polls *once right away* after creating the task
(the library waits one polling interval first), and polls every second by default (scripts
often sleep 5-10 s).

    python benchmarks/naive_client.py --base-url URL --api-key KEY --inputs LIST --out DIR

prints one JSON line: items, done, failed, seconds, items_per_s, requests by kind, peak RSS.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import requests

TARGETS = [{"model": "vocals", "formats": ["wav"]}, {"model": "instrumental", "formats": ["wav"]}]
TERMINAL = {"completed", "error", "failed"}


def peak_rss_mib() -> float:
    """This process's own peak RSS (``VmHWM``; see ``_common.peak_rss_mib`` for why not
    ``ru_maxrss``), so the script also runs on its own."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1


def process(path: str, args: argparse.Namespace, counter: Counter) -> int:
    """Upload, create, poll, download one item; return the number of files written."""
    headers = {"x-api-key": args.api_key}
    base = args.base_url
    with open(path, "rb") as handle:
        response = requests.post(
            f"{base}/assets",
            headers=headers,
            files={"file": (os.path.basename(path), handle, "audio/wav")},
            timeout=60,
        )
    counter.add("upload")
    response.raise_for_status()
    asset = response.json()
    response = requests.post(
        f"{base}/tasks",
        headers=headers,
        json={"assetId": asset["id"], "targets": TARGETS},
        timeout=60,
    )
    counter.add("create")
    response.raise_for_status()
    task = response.json()
    while True:
        response = requests.get(f"{base}/tasks/{task['id']}", headers=headers, timeout=60)
        counter.add("poll")
        response.raise_for_status()
        task = response.json()
        if all(t["status"] in TERMINAL for t in task["targets"]):
            break
        time.sleep(args.poll)
    directory = pathlib.Path(args.out) / pathlib.Path(path).stem
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for target in task["targets"]:
        if target["status"] != "completed":
            raise RuntimeError(f"target {target['model']} failed: {target.get('error')}")
        for output in target.get("output") or []:
            with requests.get(output["link"], stream=True, timeout=60) as download:
                counter.add("download")
                download.raise_for_status()
                name = f"{output['name']}.{output['format']}"
                with open(directory / name, "wb") as out:
                    for chunk in download.iter_content(1 << 16):
                        out.write(chunk)
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--inputs", required=True, help="text file: one input path per line")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args(argv)
    with open(args.inputs) as listing:
        paths = [line.rstrip("\n") for line in listing if line.strip()]
    counter = Counter()
    done = failed = 0
    errors: list[str] = []
    started, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        futures = [pool.submit(process, path, args, counter) for path in paths]
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as exc:  # a failed item is counted, the others go on
                failed += 1
                if len(errors) < 5:
                    errors.append(repr(exc))
            else:
                done += 1
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "items": len(paths),
                "done": done,
                "failed": failed,
                "errors": errors,
                "seconds": seconds,
                "items_per_s": len(paths) / seconds,
                "cpu_s": time.process_time() - cpu0,
                "requests": dict(counter.counts),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
