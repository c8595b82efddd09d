"""The emulator's CDN: signed expiring links, Range/HEAD, truncation, key-leak recording."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from audioshake_async.emulator import Emulator
from audioshake_async.emulator.testing import upload_file, write_wav


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(delay=0.0, rate_limit=None, seed=3) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
        yield session


@pytest.fixture
async def cdn() -> AsyncIterator[aiohttp.ClientSession]:
    """A session with no key: what a correct client uses for downloads."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def task(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, Any]:
    """A completed task with one WAV output (``vocals.wav``)."""
    asset = await upload_file(http, emu.base_url, write_wav(tmp_path / "in.wav", 0.5, rate=8000))
    body = {"assetId": asset["id"], "targets": [{"model": "vocals", "formats": ["wav"]}]}
    async with http.post(f"{emu.base_url}/tasks", json=body) as resp:
        created = await resp.json()
    return await emu.wait_for_task(created["id"])


def link_of(task: dict[str, Any]) -> str:
    link: str = task["targets"][0]["output"][0]["link"]
    return link


async def fetch(
    session: aiohttp.ClientSession, url: str | yarl.URL, **kw: Any
) -> tuple[int, bytes, Any]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_download_matches_digest(
    emu: Emulator, http: aiohttp.ClientSession, cdn: aiohttp.ClientSession, task: dict[str, Any]
) -> None:
    status, body, headers = await fetch(cdn, link_of(task))
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    assert int(headers["Content-Length"]) == len(body)
    digests = emu.output_digests(task["id"])
    assert digests == {"vocals.wav": hashlib.sha256(body).hexdigest()}
    async with http.get(f"{emu.base_url}/_emulator/tasks/{task['id']}/outputs") as resp:
        assert await resp.json() == digests
    async with http.get(f"{emu.base_url}/_emulator/tasks/cnope/outputs") as resp:
        assert resp.status == 404
    assert emu.output_path(task["id"], "vocals.wav").read_bytes() == body
    url = yarl.URL(link_of(task))
    assert str(url.origin()) == emu.cdn_url != emu.base_url
    assert url.path.endswith("/vocals.wav") and set(url.query) == {"expires", "sig"}


async def test_expire_links_then_refresh(
    emu: Emulator, http: aiohttp.ClientSession, cdn: aiohttp.ClientSession, task: dict[str, Any]
) -> None:
    old = link_of(task)
    async with http.post(f"{emu.base_url}/_emulator/expire-links") as resp:
        assert resp.status == 200
    status, body, headers = await fetch(cdn, old)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    assert headers["Content-Type"].startswith("application/xml")
    # GET /tasks/{id} hands out fresh links every time.
    async with http.get(f"{emu.base_url}/tasks/{task['id']}") as resp:
        fresh = link_of(await resp.json())
    assert fresh != old
    assert (await fetch(cdn, fresh))[0] == 200
    emu.expire_links()
    assert (await fetch(cdn, fresh))[0] == 403
    assert emu.stats()["cdn_denied"] == 2


async def test_link_ttl(
    emu: Emulator, http: aiohttp.ClientSession, cdn: aiohttp.ClientSession, task: dict[str, Any]
) -> None:
    expires = int(yarl.URL(link_of(task)).query["expires"])
    assert 3590 <= expires - time.time() <= 3600  # documented: links live one hour
    emu.configure(link_ttl=0)
    async with http.get(f"{emu.base_url}/tasks/{task['id']}") as resp:
        expired = link_of(await resp.json())
    status, body, _ = await fetch(cdn, expired)
    assert status == 403 and b"Request has expired" in body


@pytest.mark.parametrize(
    "tamper",
    ["sig", "expires", "filename", "no-sig", "file-id"],
)
async def test_forged_links_denied(
    cdn: aiohttp.ClientSession, task: dict[str, Any], tamper: str
) -> None:
    url = yarl.URL(link_of(task))
    query = dict(url.query)
    if tamper == "sig":
        query["sig"] = "0" * 64
    elif tamper == "expires":
        query["expires"] = str(int(query["expires"]) + 3600)  # extend the link: must fail
    elif tamper == "no-sig":
        del query["sig"]
    forged = url.with_query(query)
    if tamper == "filename":
        forged = forged.with_name("vocals_residual.wav").with_query(query)
    if tamper == "file-id":
        parts = url.path.split("/")
        parts[2] = "0" * len(parts[2])
        forged = url.with_path("/".join(parts)).with_query(query)
    status, body, _ = await fetch(cdn, forged)
    assert status == 403 and b"AccessDenied" in body


async def test_head_range_etag(cdn: aiohttp.ClientSession, task: dict[str, Any]) -> None:
    link = link_of(task)
    _, full, headers = await fetch(cdn, link)
    size = len(full)
    async with cdn.head(link) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == size
        assert resp.headers["Accept-Ranges"] == "bytes" and resp.headers["ETag"]
        assert await resp.read() == b""
    status, body, h = await fetch(cdn, link, headers={"Range": "bytes=0-99"})
    assert (status, body, h["Content-Range"]) == (206, full[:100], f"bytes 0-99/{size}")
    status, body, h = await fetch(cdn, link, headers={"Range": "bytes=1000-"})
    assert (status, body, h["Content-Range"]) == (206, full[1000:], f"bytes 1000-{size - 1}/{size}")
    assert int(h["Content-Length"]) == size - 1000
    status, _, h = await fetch(cdn, link, headers={"Range": f"bytes={size}-"})
    assert status == 416 and h["Content-Range"] == f"bytes */{size}"
    status, _, h2 = await fetch(cdn, link, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and h2["ETag"] == headers["ETag"]


async def test_truncation_fault(
    emu: Emulator, cdn: aiohttp.ClientSession, task: dict[str, Any]
) -> None:
    link = link_of(task)
    _, full, _ = await fetch(cdn, link)
    emu.configure(truncate_rate=1.0)
    async with cdn.get(link) as resp:
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(full)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    # A resumed download (Range) can be cut short as well.
    async with cdn.get(link, headers={"Range": "bytes=100-"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-{len(full) - 1}/{len(full)}"
        got = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                got += chunk
        assert 0 < len(got) < len(full) - 100 and full[100:].startswith(got)
    # HEAD is never truncated.
    async with cdn.head(link) as resp:
        assert resp.status == 200
    emu.configure(truncate_rate=0.0)
    assert (await fetch(cdn, link))[1] == full
    assert emu.stats()["faults"]["truncate"] == 2


async def test_key_leak_recorded_names_only(
    emu: Emulator, cdn: aiohttp.ClientSession, task: dict[str, Any]
) -> None:
    link = link_of(task)
    await fetch(cdn, link)
    assert emu.stats()["cdn_key_leaks"] == 0
    # A client that reuses its API session (with x-api-key) for downloads leaks the key.
    await fetch(cdn, link, headers={"x-api-key": emu.api_key})
    await fetch(cdn, link, headers={"Authorization": "Bearer secret-token"})
    stats = emu.stats()
    assert stats["cdn_key_leaks"] == 2
    assert stats["cdn_key_leak_headers"] == ["authorization", "x-api-key"]
    assert emu.api_key not in repr(stats) and "secret-token" not in repr(stats)


async def test_unknown_file_is_404(emu: Emulator, cdn: aiohttp.ClientSession) -> None:
    # A validly signed link to a file that does not exist.
    assert emu._rt is not None
    link = emu._rt.link("0" * 24, "ghost.wav")
    status, body, _ = await fetch(cdn, link)
    assert status == 404 and b"NoSuchKey" in body
