"""Emulator fault injection as a client observes it: 429, 5xx, drops, latency, staleness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audioshake_async.emulator import Emulator
from audioshake_async.emulator.testing import upload_file, write_wav

RATE_LIMITED = {"statusCode": 429, "error": "Too Many Requests", "message": "Rate limit exceeded"}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(delay=0.0, rate_limit=None, seed=5) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
        yield session


@pytest.fixture
async def asset(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, Any]:
    return await upload_file(http, emu.base_url, write_wav(tmp_path / "a.wav", 0.2, rate=8000))


def task_body(asset_id: str) -> dict[str, Any]:
    return {"assetId": asset_id, "targets": [{"model": "vocals", "formats": ["wav"]}]}


async def statuses(http: aiohttp.ClientSession, url: str, count: int) -> list[int]:
    out = []
    for _ in range(count):
        async with http.get(url) as resp:
            await resp.read()
            out.append(resp.status)
    return out


# --- rate limiting ---------------------------------------------------------------------------
async def test_token_bucket_429_without_retry_after(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    # A slow refill makes the count exact: the burst passes, the rest is limited.
    emu.configure(rate_limit=0.01, rate_limit_capacity=5)
    got = await statuses(http, f"{emu.base_url}/models", 8)
    assert got == [200] * 5 + [429] * 3
    async with http.get(f"{emu.base_url}/models") as resp:
        assert resp.status == 429
        assert await resp.json() == RATE_LIMITED
        assert "Retry-After" not in resp.headers
    assert emu.stats()["faults"]["rate_limited"] == 4


async def test_429_with_retry_after(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(rate_limit=0.01, rate_limit_capacity=1, retry_after=2)
    await statuses(http, f"{emu.base_url}/models", 1)
    async with http.get(f"{emu.base_url}/models") as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "2"
    emu.configure(retry_after=0.25)
    async with http.get(f"{emu.base_url}/models") as resp:
        assert resp.headers["Retry-After"] == "0.25"


async def test_default_rate_limit_is_documented_60_per_second() -> None:
    async with Emulator() as emu, aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http:
        assert emu.config.rate_limit == 60.0
        got = await asyncio.gather(
            *(statuses(http, f"{emu.base_url}/models", 1) for _ in range(300))
        )
        flat = [s for group in got for s in group]
        # A burst of 60 passes; 300 requests would need 4 s of refill to all pass, far more
        # than they take on loopback.
        assert flat.count(200) >= 60 and flat.count(429) > 0
        assert set(flat) == {200, 429}


async def test_rate_limit_none_disables(emu: Emulator, http: aiohttp.ClientSession) -> None:
    assert set(await statuses(http, f"{emu.base_url}/models", 150)) == {200}


async def test_rate_limit_burst_knob(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(rate_limit_burst=3)
    assert await statuses(http, f"{emu.base_url}/models", 5) == [429, 429, 429, 200, 200]
    assert emu.stats()["faults"]["rate_limit_burst"] == 3
    async with http.post(f"{emu.base_url}/_emulator/config", json={"rate_limit_burst": 1}) as resp:
        assert resp.status == 200
    assert await statuses(http, f"{emu.base_url}/models", 2) == [429, 200]


# --- 5xx, drops, latency ---------------------------------------------------------------------
async def test_fail_rate(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(fail_rate=1.0)
    for _ in range(6):
        async with http.get(f"{emu.base_url}/models") as resp:
            assert resp.status in (500, 502, 503)
            body = await resp.json()
            assert body["statusCode"] == resp.status and "Emulated" in body["message"]
    emu.configure(fail_rate=0.5)
    got = await statuses(http, f"{emu.base_url}/models", 200)
    assert 60 < sum(s >= 500 for s in got) < 140
    assert emu.stats()["faults"]["fail"] == 6 + sum(s >= 500 for s in got)


async def test_fail_statuses_and_per_route(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    emu.configure(fail_rate=1.0, fail_statuses=[503], fault_routes=["POST /tasks"])
    assert set(await statuses(http, f"{emu.base_url}/models", 3)) == {200}
    async with http.post(f"{emu.base_url}/tasks", json=task_body(asset["id"])) as resp:
        assert resp.status == 503
    assert emu.stats()["tasks_created"] == 0


async def test_drop_rate_disconnects(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(drop_rate=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.get(f"{emu.base_url}/models") as resp:
            await resp.read()
    emu.configure(drop_rate=0.0)
    assert await statuses(http, f"{emu.base_url}/models", 1) == [200]
    stats = emu.stats()
    # aiohttp may transparently retry an idempotent request once on a disconnect.
    assert stats["faults"]["drop"] in (1, 2)
    assert stats["requests"]["GET /models"] == stats["faults"]["drop"] + 1
    assert stats["responses"] == {"200": 1}


async def test_drop_after_create_is_ambiguous(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    emu.configure(drop_after_create_rate=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(
            f"{emu.base_url}/tasks", json={**task_body(asset["id"]), "metadata": "job-1"}
        ) as resp:
            await resp.read()
    # The task exists although the client never saw its id: find it by metadata.
    async with http.get(f"{emu.base_url}/tasks") as resp:
        (task,) = await resp.json()
    assert task["metadata"] == "job-1"
    assert emu.stats()["faults"]["drop_after_create"] == 1


async def test_drop_after_create_counter(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    """``drop_after_create=N``: exactly the next N creations drop their answer, then none."""
    emu.configure(drop_after_create=2)
    dropped = 0
    for i in range(4):
        try:
            async with http.post(
                f"{emu.base_url}/tasks", json={**task_body(asset["id"]), "metadata": f"j{i}"}
            ) as resp:
                assert resp.status == 200
                await resp.read()
        except aiohttp.ServerDisconnectedError:
            dropped += 1
            assert i < 2
    assert dropped == 2
    async with http.get(f"{emu.base_url}/tasks") as resp:
        assert len(await resp.json()) == 4
    stats = emu.stats()
    assert stats["faults"]["drop_after_create"] == 2
    assert stats["drop_after_create_remaining"] == 0
    # Setting it at run time re-arms the counter.
    async with http.post(f"{emu.base_url}/_emulator/config", json={"drop_after_create": 1}):
        pass
    assert emu.stats()["drop_after_create_remaining"] == 1


async def test_latency(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(latency=0.3, fault_routes=["GET /models"])
    started = time.monotonic()
    await statuses(http, f"{emu.base_url}/models", 1)
    assert time.monotonic() - started >= 0.3
    await statuses(http, f"{emu.base_url}/tasks", 1)  # not targeted
    assert emu.stats()["faults"]["latency"] == 1


async def test_latency_trips_client_timeout(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(latency=5.0)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(
            f"{emu.base_url}/models", timeout=aiohttp.ClientTimeout(total=0.2)
        ) as resp:
            await resp.read()


async def test_stale_reads(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    async with http.post(f"{emu.base_url}/tasks", json=task_body(asset["id"])) as resp:
        created = await resp.json()
    await emu.wait_for_task(created["id"])
    emu.configure(stale_rate=1.0)
    async with http.get(f"{emu.base_url}/tasks/{created['id']}") as resp:
        stale = await resp.json()
    assert stale == created  # the creation snapshot: still processing
    emu.configure(stale_rate=0.0)
    async with http.get(f"{emu.base_url}/tasks/{created['id']}") as resp:
        fresh = await resp.json()
    assert fresh["targets"][0]["status"] == "completed"
    assert emu.stats()["faults"]["stale"] == 1


async def test_faults_skip_introspection(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(fail_rate=1.0, drop_rate=1.0, rate_limit_burst=10)
    async with http.get(f"{emu.base_url}/_emulator/stats") as resp:
        assert resp.status == 200


async def test_seed_reproduces_fault_sequence() -> None:
    async def run() -> list[int]:
        async with (
            Emulator(rate_limit=None, fail_rate=0.5, seed=99) as emu,
            aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http,
        ):
            return await statuses(http, f"{emu.base_url}/models", 30)

    first, second = await run(), await run()
    assert first == second and len(set(first)) > 1


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        Emulator(fail_rate=1.5)
    with pytest.raises(TypeError, match="unknown emulator knob"):
        Emulator(failrate=0.5)
    with pytest.raises(ValueError, match="fail_statuses"):
        Emulator(fail_statuses=[404])
    with pytest.raises(ValueError, match="unknown fault_routes"):
        Emulator(fault_routes=["POST /task"])


async def test_startup_knobs_frozen_at_run_time(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="before start"):
        emu.configure(port=1234)
