"""Small helpers for tests written against the emulator (standard library only)."""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import struct
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp


def write_wav(
    path: Path,
    seconds: float = 1.0,
    *,
    rate: int = 44_100,
    channels: int = 2,
    sampwidth: int = 2,
    seed: int = 0,
) -> Path:
    """Write a deterministic PCM WAV: a different tone per channel plus a little noise.

    Channels differ on purpose, so mid/side stems of the emulator are both non-silent.
    """
    rng = random.Random(seed)
    frames = int(seconds * rate)
    full_scale = float(2 ** (8 * sampwidth - 1) - 1)
    data = bytearray()
    for i in range(frames):
        for ch in range(channels):
            freq = 220.0 * (ch + 1) + 30.0 * seed
            value = 0.4 * math.sin(2 * math.pi * freq * i / rate) + 0.02 * (rng.random() - 0.5)
            sample = round(value * full_scale)
            if sampwidth == 1:
                data += struct.pack("<B", sample + 128)
            elif sampwidth == 2:
                data += struct.pack("<h", sample)
            elif sampwidth == 3:
                data += struct.pack("<i", sample)[:3]
            else:
                data += struct.pack("<i", sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(sampwidth)
        wav.setframerate(rate)
        wav.writeframes(bytes(data))
    return path


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` (sync or async) until true; ``TimeoutError`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"{message} not met within {timeout} s")
        await asyncio.sleep(interval)


async def upload_file(
    session: aiohttp.ClientSession,
    base_url: str,
    path: Path,
    *,
    filename: str | None = None,
    content_type: str = "audio/wav",
) -> dict[str, Any]:
    """``POST /assets`` with raw aiohttp (the session must carry ``x-api-key``).

    For the emulator's own tests and quick scripts; applications should use the client.
    """
    form = aiohttp.FormData()
    with path.open("rb") as fh:
        form.add_field("file", fh, filename=filename or path.name, content_type=content_type)
        async with session.post(f"{base_url}/assets", data=form) as resp:
            resp.raise_for_status()
            body: dict[str, Any] = await resp.json()
    return body
