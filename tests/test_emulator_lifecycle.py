"""Emulator lifecycle: ports, clean shutdown with work in flight, views, loopback guard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from audioshake_async.emulator import Emulator, EmulatorConfig
from audioshake_async.emulator.http_common import is_loopback
from audioshake_async.emulator.testing import upload_file, wait_until, write_wav


def _emulator_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("audioshake-emulator")]


async def test_clean_shutdown_with_work_in_flight(tmp_path: Path) -> None:
    emu = await Emulator(delay=30.0, rate_limit=None, webhook_delay_jitter=30.0).start()
    workdir = emu.workdir
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http:
        asset = await upload_file(http, emu.base_url, write_wav(tmp_path / "a.wav", 0.2))
        async with http.post(f"{emu.base_url}/webhooks", json={"url": "http://127.0.0.1:9/"}):
            pass
        body = {"assetId": asset["id"], "targets": [{"model": "bass", "formats": ["wav"]}]}
        async with http.post(f"{emu.base_url}/tasks", json=body) as resp:
            slow = await resp.json()
        emu.configure(delay=0.0)
        async with http.post(f"{emu.base_url}/tasks", json=body):
            pass
    await wait_until(lambda: emu.stats()["webhooks"]["pending"] == 1, message="delivery queued")
    assert emu.task(slow["id"])["targets"][0]["status"] == "processing"
    assert len(_emulator_tasks()) == 2  # one task runner, one webhook delivery
    await emu.aclose()
    assert _emulator_tasks() == []
    assert not workdir.exists()
    await emu.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.base_url


async def test_ports_and_views() -> None:
    config = EmulatorConfig(api_key="k", delay=0.0)
    async with Emulator(config, seed=1) as first, Emulator(config) as second:
        assert first.base_url != second.base_url and first.cdn_url != second.cdn_url
        assert first.api_key == "k" and first.config.seed == 1
        assert len(first.tasks) == 0 and list(first.tasks) == []
        with pytest.raises(KeyError):
            first.task("cnope")
        with pytest.raises(KeyError):
            first.output_digests("cnope")
        with pytest.raises(RuntimeError, match="already started"):
            await first.start()


async def test_configure_before_start() -> None:
    emu = Emulator()
    assert emu.configure(delay=0.0).delay == 0.0
    assert emu.config.delay == 0.0
    async with emu:
        assert emu.config.delay == 0.0


async def test_seeded_ids_are_reproducible(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "a.wav", 0.1)

    async def ids() -> list[str]:
        async with (
            Emulator(seed=42, rate_limit=None) as emu,
            aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http,
        ):
            asset = await upload_file(http, emu.base_url, src)
            body = {"assetId": asset["id"], "targets": [{"model": "bass", "formats": ["wav"]}]}
            async with http.post(f"{emu.base_url}/tasks", json=body) as resp:
                task = await resp.json()
            return [asset["id"], task["id"], task["clientId"], task["targets"][0]["id"]]

    first = await ids()
    assert first == await ids()
    assert all(i.startswith("c") and len(i) == 25 and i.isalnum() and i.islower() for i in first)


@pytest.mark.parametrize(
    ("remote", "expected"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("10.0.0.1", False),
     ("192.168.1.2", False), (None, False), ("not-an-ip", False)],
)  # fmt: skip
def test_introspection_is_loopback_only(remote: str | None, expected: bool) -> None:
    assert is_loopback(remote) is expected
