"""Uploads: size limit (413) up front and while streaming, and constant memory on big bodies."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from audioshake_async.emulator import Emulator
from audioshake_async.emulator import uploads as emulator_uploads

MiB = 1024 * 1024


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(delay=0.0, rate_limit=None, max_upload_bytes=100_000) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
        yield session


async def zeros(total: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    """An async body: aiohttp sends it chunked, with no Content-Length."""
    block = bytes(chunk)
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        yield block[:size]
        sent += size


def multipart(payload: aiohttp.payload.Payload | bytes, filename: str) -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(payload, {"Content-Type": "audio/wav"})
    part.set_content_disposition("form-data", name="file", filename=filename)
    return writer


def leftover_files(emu: Emulator) -> list[Path]:
    return [p for p in (emu.workdir / "assets").rglob("*") if p.is_file()]


async def test_413_from_content_length(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = multipart(bytes(1 * MiB), "big.wav")
    async with http.post(f"{emu.base_url}/assets", data=body) as resp:
        assert resp.status == 413
        err = await resp.json()
    assert err["error"] == "Payload Too Large" and "100000" in err["message"]
    assert emu.stats()["uploads_rejected"] == 1 and emu.stats()["assets_created"] == 0


async def test_413_while_streaming_chunked(emu: Emulator, http: aiohttp.ClientSession) -> None:
    payload = aiohttp.payload.AsyncIterablePayload(zeros(2 * MiB))
    async with http.post(f"{emu.base_url}/assets", data=multipart(payload, "big.wav")) as resp:
        assert "Content-Length" not in resp.request_info.headers
        assert resp.status == 413
    assert leftover_files(emu) == []  # the partial file was removed
    assert emu.stats()["assets_created"] == 0


async def test_413_just_over_limit(emu: Emulator, http: aiohttp.ClientSession) -> None:
    # Within the multipart slack of the Content-Length check: caught while streaming.
    async with http.post(f"{emu.base_url}/assets", data=multipart(bytes(100_001), "a.wav")) as r:
        assert r.status == 413
    async with http.post(f"{emu.base_url}/assets", data=multipart(bytes(100_000), "a.wav")) as r:
        assert r.status == 200
        assert (await r.json())["name"] == "a.wav"
    assert emu.stats()["bytes_uploaded"] == 100_000


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
async def test_large_upload_constant_memory() -> None:
    """200 MB through POST /assets: the emulator streams it to disk, RSS barely moves.

    Client and emulator share this process, and the client streams from a generator, so
    any buffering of the body would show up in the sampled peak RSS.
    """
    total = 200 * MiB
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            await asyncio.sleep(0.005)

    async with (
        Emulator(rate_limit=None) as emu,
        aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http,
    ):
        baseline = _rss_bytes()
        sampler = asyncio.create_task(sample())
        payload = aiohttp.payload.AsyncIterablePayload(zeros(total))
        try:
            async with http.post(
                f"{emu.base_url}/assets", data=multipart(payload, "big.wav")
            ) as resp:
                assert resp.status == 200
                asset = await resp.json()
        finally:
            done.set()
            await sampler
        assert emu.stats()["bytes_uploaded"] == total
        stored = next((emu.workdir / "assets" / asset["id"]).iterdir())
        assert stored.stat().st_size == total
    growth = peak - baseline
    assert growth < 40 * MiB, f"RSS grew by {growth / MiB:.1f} MiB for a 200 MiB upload"


@pytest.mark.parametrize("filename", ["..", ".", "", "...", "dir/..", "C:\\music\\.."])
async def test_upload_named_like_a_directory_gets_a_default_name(
    emu: Emulator, http: aiohttp.ClientSession, filename: str
) -> None:
    """A part filename naming no file is stored as ``upload``, never as the assets folder."""
    body = aiohttp.MultipartWriter("form-data")
    part = body.append(b"RIFF" * 10, {"Content-Type": "audio/wav"})
    # Unquoted: aiohttp would percent-encode the separators, hiding them from the server.
    part.set_content_disposition("form-data", quote_fields=False, name="file", filename=filename)
    async with http.post(f"{emu.base_url}/assets", data=body) as r:
        assert r.status == 200, await r.text()
        asset = await r.json()
    assert asset["name"] == "upload" and asset["format"] == "wav"
    stored = emu.workdir / "assets" / asset["id"] / "upload"
    assert stored.read_bytes() == b"RIFF" * 10
    assert leftover_files(emu) == [stored]


class _FullDisk:
    """An aiofiles handle whose writes fail as on a full disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.closed = False

    async def write(self, chunk: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("where", ["open", "write"])
async def test_storage_error_answers_500_in_the_envelope(
    emu: Emulator, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    handles: list[_FullDisk] = []

    async def fake_open(path: Path, mode: str) -> _FullDisk:
        if where == "open":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        # What a real write would have left behind before the disk filled up.
        await asyncio.to_thread(Path(path).write_bytes, b"partial")
        handles.append(_FullDisk(Path(path)))
        return handles[-1]

    monkeypatch.setattr(emulator_uploads, "aiofiles", SimpleNamespace(open=fake_open))
    async with http.post(f"{emu.base_url}/assets", data=multipart(bytes(1000), "a.wav")) as r:
        assert r.status == 500
        assert r.content_type == "application/json"
        err = await r.json()
    assert err == {
        "statusCode": 500,
        "error": "Internal Server Error",
        "message": "Could not store the uploaded file",
    }
    assert all(h.closed for h in handles)
    assert list((emu.workdir / "assets").iterdir()) == []  # folder and partial file removed
    assert emu.stats()["assets_created"] == 0
    monkeypatch.undo()
    async with http.post(f"{emu.base_url}/assets", data=multipart(bytes(1000), "a.wav")) as r:
        assert r.status == 200


async def test_unexpected_handler_error_answers_500_in_the_envelope(
    emu: Emulator, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(name: str, content_type: str | None) -> str:
        raise RuntimeError("bug")

    monkeypatch.setattr(emulator_uploads, "format_of", broken)
    async with http.post(f"{emu.base_url}/assets", data=multipart(bytes(10), "a.wav")) as r:
        assert r.status == 500
        err = await r.json()
    assert err["statusCode"] == 500 and err["error"] == "Internal Server Error"


async def test_close_removes_the_workdir_with_its_uploads() -> None:
    """The removal runs in a worker thread now; aclose still returns only once it is done."""
    async with (
        Emulator(rate_limit=None) as emu,
        aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http,
    ):
        workdir = emu.workdir
        async with http.post(f"{emu.base_url}/assets", data=multipart(bytes(1000), "a.wav")) as r:
            assert r.status == 200
        assert leftover_files(emu)
    assert not workdir.exists()
    await emu.aclose()  # a second close is a no-op
