"""Use the batch engine as one stage of an async pipeline.

Inputs come from an async generator (here a slow directory scan standing in for a queue or a
database cursor); results are consumed as they finish and handed to the next stage (here a
peak-level measurement of each vocals stem, done off the event loop).

    python examples/pipeline.py examples/audio stems-pipeline
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
import wave
from array import array
from collections.abc import AsyncIterator

import anyio.to_thread
from _service import service

from audioshake_async import AudioShake, Target


async def discover(directory: str) -> AsyncIterator[str]:
    """Yield input files one by one, as a queue consumer would."""
    # Directory listing is blocking I/O: done in a worker thread, off the event loop.
    paths = await anyio.to_thread.run_sync(lambda: sorted(pathlib.Path(directory).glob("*.wav")))
    for path in paths:
        await asyncio.sleep(0)  # a real source would await its queue here
        yield str(path)


def peak_dbfs(path: pathlib.Path) -> float:
    """Peak level of a 16-bit WAV in dBFS (blocking; run in a thread)."""
    import math

    with wave.open(str(path), "rb") as handle:
        samples = array("h", handle.readframes(handle.getnframes()))
    peak = max((abs(s) for s in samples), default=0)
    return 20 * math.log10(peak / 32768) if peak else float("-inf")


async def main(source_dir: str, out_dir: str) -> None:
    """Stems in, one measurement per finished input out."""
    async with service() as (base_url, key), AudioShake(key, base_url) as client:
        results = client.batch(
            discover(source_dir), targets=[Target("vocals", ["wav"])], out_dir=out_dir
        )
        # aclosing: leaving the loop early cancels the batch cleanly.
        async with contextlib.aclosing(results):
            async for result in results:
                if not result.ok:
                    print(f"{result.input}: failed: {result.error}")
                    continue
                vocals = next(p for p in result.files if p.name.startswith("vocals"))
                level = await anyio.to_thread.run_sync(peak_dbfs, vocals)
                print(f"{pathlib.Path(result.input).name}: vocals peak {level:.1f} dBFS")


if __name__ == "__main__":
    args = sys.argv[1:3] + ["examples/audio", "stems-pipeline"][len(sys.argv[1:3]) :]
    asyncio.run(main(args[0], args[1]))
