"""Webhook deliveries from the emulator to a local aiohttp receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from audioshake_async.emulator import Emulator
from audioshake_async.emulator.testing import upload_file, wait_until, write_wav


class Receiver:
    """A webhook endpoint that records payloads and can fail its first N requests."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_first = 0
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hits <= self.fail_first:
            return web.Response(status=503)
        self.received.append(await request.json())
        self.headers.append(dict(request.headers))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop()


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(delay=0.0, rate_limit=None, seed=21, webhook_backoff=0.01) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
        yield session


@pytest.fixture
async def asset(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, Any]:
    return await upload_file(http, emu.base_url, write_wav(tmp_path / "a.wav", 0.2, rate=8000))


async def register(emu: Emulator, http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.post(f"{emu.base_url}/webhooks", json={"url": url}) as resp:
        assert resp.status == 200
        hook: dict[str, Any] = await resp.json()
        return hook


async def create(
    emu: Emulator, http: aiohttp.ClientSession, asset_id: str, models: list[str]
) -> dict[str, Any]:
    body = {"assetId": asset_id, "targets": [{"model": m, "formats": ["wav"]} for m in models]}
    async with http.post(f"{emu.base_url}/tasks", json=body) as resp:
        task: dict[str, Any] = await resp.json()
        return task


async def test_one_delivery_per_terminal_target(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], receiver: Receiver
) -> None:
    await register(emu, http, receiver.url)
    emu.configure(error_models=["drums"])
    task = await create(emu, http, asset["id"], ["bass", "drums", "vocals"])
    await emu.wait_idle(10)
    assert len(receiver.received) == 3
    # Documented: the payload is the full task (no envelope), identical to GET /tasks/{id}.
    assert all(p["id"] == task["id"] and len(p["targets"]) == 3 for p in receiver.received)
    assert receiver.received[-1]["completedAt"] is not None
    finished = [sum(t["status"] != "processing" for t in p["targets"]) for p in receiver.received]
    assert finished == [1, 2, 3]
    final = {t["model"]: t["status"] for t in receiver.received[-1]["targets"]}
    assert final == {"bass": "completed", "drums": "error", "vocals": "completed"}
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert "x-api-key" not in {k.lower() for k in receiver.headers[0]}
    stats = emu.stats()["webhooks"]
    assert stats["deliveries_attempted"] == stats["deliveries_succeeded"] == 3
    assert stats["attempts"] == 3 and stats["retries"] == 0 and stats["pending"] == 0


async def test_no_delivery_without_registration(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], receiver: Receiver
) -> None:
    hook = await register(emu, http, receiver.url)
    async with http.delete(f"{emu.base_url}/webhooks/{hook['id']}") as resp:
        assert resp.status == 204
    await create(emu, http, asset["id"], ["bass"])
    await emu.wait_idle(10)
    assert receiver.received == [] and emu.stats()["webhooks"]["attempts"] == 0


async def test_retries_until_success(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], receiver: Receiver
) -> None:
    receiver.fail_first = 2
    await register(emu, http, receiver.url)
    await create(emu, http, asset["id"], ["bass"])
    await emu.wait_idle(10)
    assert len(receiver.received) == 1 and receiver.hits == 3
    stats = emu.stats()["webhooks"]
    assert (stats["attempts"], stats["retries"], stats["deliveries_succeeded"]) == (3, 2, 1)


async def test_gives_up_after_retries(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], receiver: Receiver
) -> None:
    emu.configure(webhook_retries=2)
    receiver.fail_first = 100
    await register(emu, http, receiver.url)
    # A second endpoint that refuses connections: retried as well, then given up.
    await register(emu, http, "http://127.0.0.1:9/closed")
    await create(emu, http, asset["id"], ["bass"])
    await emu.wait_idle(10)
    assert receiver.hits == 3
    stats = emu.stats()["webhooks"]
    assert stats["deliveries_failed"] == 2 and stats["attempts"] == 6
    assert stats["deliveries_succeeded"] == 0


async def test_drop_and_duplicate_knobs(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], receiver: Receiver
) -> None:
    await register(emu, http, receiver.url)
    emu.configure(webhook_drop_rate=1.0)
    await create(emu, http, asset["id"], ["bass", "drums"])
    await emu.wait_idle(10)
    assert receiver.received == []
    emu.configure(webhook_drop_rate=0.0, webhook_duplicate_rate=1.0)
    task = await create(emu, http, asset["id"], ["bass"])
    await emu.wait_idle(10)
    assert [p["id"] for p in receiver.received] == [task["id"], task["id"]]
    stats = emu.stats()
    assert stats["webhooks"]["dropped"] == 2 and stats["webhooks"]["duplicated"] == 1
    assert stats["faults"]["webhook_drop"] == 2 and stats["faults"]["webhook_duplicate"] == 1


async def test_delay_jitter_reorders(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], receiver: Receiver
) -> None:
    """With jitter, an older snapshot can arrive after a newer one (receivers must cope)."""
    await register(emu, http, receiver.url)
    emu.configure(webhook_delay_jitter=0.3, jitter=0.05)
    for _ in range(5):
        await create(emu, http, asset["id"], ["bass", "drums", "vocals", "piano"])
    await emu.wait_idle(10)
    assert len(receiver.received) == 20
    by_task: dict[str, list[int]] = {}
    for payload in receiver.received:
        done = sum(t["status"] != "processing" for t in payload["targets"])
        by_task.setdefault(payload["id"], []).append(done)
    assert any(seq != sorted(seq) for seq in by_task.values())


async def test_close_cancels_pending_deliveries(tmp_path: Path, receiver: Receiver) -> None:
    async with Emulator(delay=0.0, rate_limit=None, webhook_delay_jitter=30.0) as emu:
        async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
            asset = await upload_file(session, emu.base_url, write_wav(tmp_path / "b.wav", 0.1))
            await register(emu, session, receiver.url)
            await create(emu, session, asset["id"], ["bass"])
        await wait_until(lambda: emu.stats()["webhooks"]["pending"] == 1, message="queued")
    # Leaving the context returned promptly and left nothing running.
    await asyncio.sleep(0)
    assert receiver.received == []
