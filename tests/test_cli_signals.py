"""SIGTERM stops ``run`` the way Ctrl-C does: the webhook it registered is removed, exit 143."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from audioshake_async import AudioShake
from audioshake_async.emulator import Emulator

from .conftest import write_wav

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_sigterm_removes_the_webhook_and_exits_143(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    # Processing never finishes during the test: the signal lands while the task is waited on.
    emulator.configure(delay=600.0)
    source = tmp_path / "in.wav"
    write_wav(source)
    port = free_port()
    command = [sys.executable, "-m", "audioshake_async", "run", str(source), "-m", "vocals"]
    command += ["-o", str(tmp_path / "o"), "--quiet", "--base-url", emulator.base_url]
    command += ["--api-key", emulator.api_key, "--webhook-listen", f"127.0.0.1:{port}"]
    command += ["--webhook-url", f"http://127.0.0.1:{port}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    async with await anyio.open_process(command, env=env) as process:
        with anyio.fail_after(30):
            # The child's progress is only visible through the emulator's counters.
            while "POST /tasks" not in emulator.stats()["requests"]:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        async with AudioShake(emulator.api_key, emulator.base_url, rate_limit=None) as client:
            assert len(await client.webhooks.list()) == 1
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            status = await process.wait()
        assert process.stderr is not None
        stderr = "".join([chunk async for chunk in TextReceiveStream(process.stderr)])
    assert status == 143, stderr[-2000:]
    assert "terminated; re-run the same command to resume" in stderr
    assert emulator.stats()["requests"].get("DELETE /webhooks/{id}") == 1
    async with AudioShake(emulator.api_key, emulator.base_url, rate_limit=None) as client:
        assert await client.webhooks.list() == []
    # Nothing half-written under a final name.
    assert not list((tmp_path / "o").glob("*/*.wav"))
