"""Shared fixtures: small WAV inputs, a running emulator, a client pointed at it."""

from __future__ import annotations

import asyncio
import math
import pathlib
import struct
import warnings
import wave
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from audioshake_async import AudioShake, RetryPolicy
from audioshake_async.emulator import Emulator

from ._postgres import PostgresServer, running_postgres

#: Fast retries for tests (the defaults wait up to 30 s between attempts).
FAST_RETRY = RetryPolicy(max_retries=8, base_delay=0.01, max_delay=0.05)


def write_wav(
    path: pathlib.Path, *, seconds: float = 0.25, rate: int = 8000, seed: int = 0
) -> None:
    """A small stereo 16-bit WAV whose content depends on ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = bytearray()
    for i in range(int(seconds * rate)):
        left = int(8000 * math.sin(i * (0.05 + seed * 0.013)))
        right = int(6000 * math.sin(i * (0.031 + seed * 0.007)))
        frames += struct.pack("<hh", left, right)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(bytes(frames))


@pytest.fixture(autouse=True)
def _no_idle_event_loop() -> None:
    """Close the idle event loop pytest-asyncio (0.25 to 1.3) leaves set after an async test.

    Its event_loop fixture ends by setting a fresh, unclosed loop as the current one (so that a
    later ``asyncio.get_event_loop()`` does not return a closed loop). A sync test that calls
    ``asyncio.run`` (the CLI's ``main``) replaces that loop without closing it, and the garbage
    collector later reports its self-pipe socket as a ResourceWarning in whichever test is
    running then. pytest-asyncio 1.4 no longer sets one; the floor, 0.25.1, does. Runs before
    the test's own event loop is created; a running loop or one of pytest-asyncio's own
    fixture loops is left alone.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:  # none set (set_event_loop(None), or not the main thread)
            return
    if loop.is_running() or getattr(loop, "__pytest_asyncio", False):
        return
    loop.close()
    policy.set_event_loop(None)


@pytest.fixture
def make_wavs(tmp_path: pathlib.Path) -> Callable[..., list[pathlib.Path]]:
    """``make_wavs(n, subdir="in")`` writes n distinct small WAVs and returns their paths."""

    def make(count: int, subdir: str = "in", prefix: str = "track") -> list[pathlib.Path]:
        paths = [tmp_path / subdir / f"{prefix}{i:04d}.wav" for i in range(count)]
        for i, path in enumerate(paths):
            write_wav(path, seed=i)
        return paths

    return make


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator with instant processing and no rate limit (tests turn knobs on)."""
    async with Emulator(delay=0.0, rate_limit=None, seed=1234) as emu:
        yield emu


def fast_client(
    emulator: Emulator,
    *,
    rate_limit: float = 2000.0,
    initial_interval: float = 0.02,
    max_interval: float = 0.2,
) -> AudioShake:
    """A client on ``emulator`` with fast retries and polls (tests tune the schedule)."""
    from audioshake_async import PollPolicy

    return AudioShake(
        emulator.api_key,
        emulator.base_url,
        retry=FAST_RETRY,
        rate_limit=rate_limit,
        poll=PollPolicy(initial_interval=initial_interval, max_interval=max_interval),
    )


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[AudioShake]:
    """A client on the emulator with fast retries and polls."""
    async with fast_client(emulator) as shared:
        yield shared


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (temp directory, free port)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's server: tests never share one."""
    return postgres_server.new_database()


# The S3-compatible server (moto's) for the s3:// tests; see tests/_s3.py.
from ._s3 import s3, s3_server  # noqa: E402, F401
