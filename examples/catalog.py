"""Bulk-process a music catalog: every audio file under a directory to stems, resumable.

    python examples/catalog.py examples/audio stems

Re-run the same command after a crash or Ctrl-C: finished tracks are skipped, created tasks are
awaited again instead of created twice, and only missing files are downloaded.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys

from _service import service

from audioshake_async import AudioShake, Target
from audioshake_async.batch import FileWritten, ItemFailed, expand_inputs


def on_event(event: object) -> None:
    """Print the events a catalog owner cares about."""
    if isinstance(event, FileWritten):
        print(f"  wrote {event.location} ({event.size} bytes)")
    elif isinstance(event, ItemFailed):
        print(f"  FAILED {event.input}: {event.error}")


async def main(source_dir: str, out_dir: str) -> int:
    """Run the catalog; return the number of failed tracks."""
    targets = [Target("vocals", ["wav"]), Target("instrumental", ["wav"])]
    journal = pathlib.Path(out_dir) / ".audioshake-journal.sqlite"
    failed = 0
    async with service() as (base_url, key), AudioShake(key, base_url) as client:
        inputs = expand_inputs([source_dir], exclude=[out_dir])
        async for result in client.batch(
            inputs, targets=targets, out_dir=out_dir, journal=journal, progress=on_event
        ):
            print(f"{result.status:8} {result.input} -> {result.directory}")
            failed += not result.ok
        print("API requests:", client.request_counts)
    return failed


if __name__ == "__main__":
    source, out = (sys.argv[1:3] + ["examples/audio", "stems"][len(sys.argv[1:3]) :])[:2]
    sys.exit(1 if asyncio.run(main(source, out)) else 0)
