"""Downloads on loopback: atomic files, Range resume, restarts, link refresh, no key on the CDN."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from audioshake_async import RetryPolicy, errors
from audioshake_async.core import download as _download
from audioshake_async.core import sink as _sink
from audioshake_async.core.download import MAX_LINK_REFRESHES, WRITE_BATCH, fetch_to_file
from audioshake_async.core.transport import Transport

from ._servers import (
    API_KEY,
    FAST_RETRY,
    Blob,
    FakeAPI,
    FakeCDN,
    Seen,
    api_client,
    base_url,
    record_sleeps,
    serve,
    task_json,
)

SIZE = 3 * WRITE_BATCH + 4321


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    """A transport whose API origin is a port nothing serves: every CDN is another origin."""
    api = FakeAPI()
    async with serve(api.app) as api_server:
        t = Transport(
            base_url=base_url(api_server),
            auth_headers={"x-api-key": API_KEY},
            retry=FAST_RETRY,
            rate_limit=None,
        )
        try:
            yield t
        finally:
            await t.aclose()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def files_under(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())


def assert_no_key(cdn: FakeCDN) -> None:
    assert cdn.seen, "the CDN saw no request at all"
    for seen in cdn.seen:
        assert "x-api-key" not in seen.headers
        assert API_KEY not in str(dict(seen.headers))


async def test_download_byte_exact_with_progress(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN()
    cdn.blobs["a/vocals.wav"] = Blob(data)
    progress: list[tuple[int, int | None]] = []
    async with serve(cdn.app) as server:
        dest = tmp_path / "out" / "vocals.wav"
        result = await fetch_to_file(
            transport,
            cdn.link(server, "a/vocals.wav", "sig"),
            dest,
            progress=lambda n, total: progress.append((n, total)),
        )
    assert dest.read_bytes() == data
    assert result.path == dest and result.size == SIZE and result.sha256 == sha(data)
    assert leftovers(dest.parent) == ["vocals.wav"]
    counts = [n for n, _ in progress]
    assert counts == sorted(counts) and counts[-1] == SIZE and len(counts) >= 3
    assert all(total == SIZE for _, total in progress)
    assert_no_key(cdn)
    assert transport.request_counts["GET <download>"] == 1


async def test_checksum_can_be_skipped(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN()
    cdn.blobs["x"] = Blob(data[:1000])
    async with serve(cdn.app) as server:
        result = await fetch_to_file(
            transport, cdn.link(server, "x"), tmp_path / "x.wav", checksum=False
        )
    assert result.sha256 is None and result.size == 1000


async def test_truncated_download_resumes_with_range(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN(ranges=True)
    first_cut, second_cut = WRITE_BATCH + 777, 2 * WRITE_BATCH + 5
    cdn.blobs["f"] = Blob(data, cuts=[first_cut, second_cut])
    async with serve(cdn.app) as server:
        dest = tmp_path / "f.wav"
        result = await fetch_to_file(transport, cdn.link(server, "f", "t"), dest)
    assert dest.read_bytes() == data and result.sha256 == sha(data)
    assert [s.headers.get("Range") for s in cdn.seen] == [
        None,
        f"bytes={first_cut}-",
        f"bytes={second_cut}-",
    ]
    assert all(s.headers.get("If-Range") == '"v1"' for s in cdn.seen[1:])
    assert leftovers(tmp_path) == ["f.wav"]
    assert_no_key(cdn)


async def test_server_without_range_support_restarts_from_zero(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN(ranges=False)
    cdn.blobs["f"] = Blob(data, cuts=[WRITE_BATCH + 10])
    progress: list[int] = []
    async with serve(cdn.app) as server:
        dest = tmp_path / "f.wav"
        result = await fetch_to_file(
            transport, cdn.link(server, "f"), dest, progress=lambda n, t: progress.append(n)
        )
    assert dest.read_bytes() == data and result.size == SIZE and result.sha256 == sha(data)
    assert [s.headers.get("Range") for s in cdn.seen] == [None, None]
    assert progress[-1] == SIZE


async def test_server_ignoring_range_restarts_from_zero(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    """Accept-Ranges advertised, but a 200 with the whole body answers the Range request."""
    cdn = FakeCDN(ranges=True, ignore_range=True)
    cdn.blobs["f"] = Blob(data, cuts=[WRITE_BATCH + 10])
    async with serve(cdn.app) as server:
        dest = tmp_path / "f.wav"
        result = await fetch_to_file(transport, cdn.link(server, "f"), dest)
    assert cdn.seen[1].headers.get("Range") == f"bytes={WRITE_BATCH + 10}-"
    assert dest.read_bytes() == data and result.size == SIZE and result.sha256 == sha(data)


async def test_expired_link_is_refreshed(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN()
    cdn.blobs["f"] = Blob(data, tokens={"fresh"})
    refreshed: list[str] = []
    async with serve(cdn.app) as server:

        async def refresh() -> str:
            refreshed.append("x")
            return cdn.link(server, "f", "fresh")

        dest = tmp_path / "f.wav"
        await fetch_to_file(transport, cdn.link(server, "f", "stale"), dest, refresh=refresh)
    assert dest.read_bytes() == data
    assert refreshed == ["x"]
    assert [s.query.get("token") for s in cdn.seen] == ["stale", "fresh"]
    assert_no_key(cdn)


async def test_link_that_stays_expired_gives_up(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN()
    cdn.blobs["f"] = Blob(data, tokens={"never"})
    async with serve(cdn.app) as server:

        async def refresh() -> str:
            return cdn.link(server, "f", "still-stale")

        with pytest.raises(errors.DownloadError, match="refreshes"):
            await fetch_to_file(
                transport, cdn.link(server, "f", "stale"), tmp_path / "f.wav", refresh=refresh
            )
        # Without a way to refresh, a 403 is final at once.
        with pytest.raises(errors.DownloadError, match="403"):
            await fetch_to_file(transport, cdn.link(server, "f", "stale"), tmp_path / "g.wav")
    assert len(cdn.seen) == MAX_LINK_REFRESHES + 1 + 1
    assert leftovers(tmp_path) == []


async def test_every_attempt_failing_leaves_no_file(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN()
    cdn.blobs["503"] = Blob(data, failures=100, fail_status=503)
    cdn.blobs["cut"] = Blob(data, cuts=[WRITE_BATCH + 1] * 100)
    async with serve(cdn.app) as server:
        with pytest.raises(errors.DownloadError, match="gave up"):
            await fetch_to_file(transport, cdn.link(server, "503"), tmp_path / "a.wav")
        with pytest.raises(errors.DownloadError, match="gave up") as info:
            await fetch_to_file(transport, cdn.link(server, "cut", "SIGNATURE"), tmp_path / "b.wav")
    assert leftovers(tmp_path) == []  # neither the final file nor the .part file
    assert len(cdn.seen) == 2 * (FAST_RETRY.max_retries + 1)
    assert "SIGNATURE" not in str(info.value)


class RetryAfterCDN(FakeCDN):
    """A FakeCDN that answers the first requests with a status and a ``Retry-After``."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        super().__init__()
        self.answers = answers

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if self.answers:
            headers = CIMultiDict(request.headers)
            self.seen.append(Seen(request.method, request.path, dict(request.query), headers))
            status, retry_after = self.answers.pop(0)
            return web.Response(status=status, text="busy", headers={"Retry-After": retry_after})
        return await super()._get(request)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays downloads chose between attempts (slept as zero, so tests stay fast)."""
    return record_sleeps(monkeypatch, _download)


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_from_the_cdn_sets_the_delay(
    transport: Transport, tmp_path: pathlib.Path, data: bytes, sleeps: list[float], status: int
) -> None:
    cdn = RetryAfterCDN([(status, "7")])
    cdn.blobs["f"] = Blob(data)
    async with serve(cdn.app) as server:
        result = await fetch_to_file(transport, cdn.link(server, "f"), tmp_path / "f.wav")
    assert result.sha256 == sha(data) and (tmp_path / "f.wav").read_bytes() == data
    # The server's 7 s, not FAST_RETRY's backoff (at most 0.05 s).
    assert sleeps == [7.0]
    assert len(cdn.seen) == 2


async def test_retry_after_over_the_cap_gives_up_at_once(
    transport: Transport, tmp_path: pathlib.Path, data: bytes, sleeps: list[float]
) -> None:
    """Like API calls: a wait over ``max_retry_after`` raises instead of stalling the download."""
    too_long = FAST_RETRY.max_retry_after + 1
    cdn = RetryAfterCDN([(503, f"{too_long:g}")])
    cdn.blobs["f"] = Blob(data)
    async with serve(cdn.app) as server:
        with pytest.raises(errors.DownloadError, match="Retry-After"):
            await fetch_to_file(transport, cdn.link(server, "f"), tmp_path / "f.wav")
    assert sleeps == [] and len(cdn.seen) == 1 and leftovers(tmp_path) == []


async def test_retry_after_is_capped_by_a_smaller_policy(
    transport: Transport, tmp_path: pathlib.Path, data: bytes, sleeps: list[float]
) -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05, max_retry_after=3.0)
    cdn = RetryAfterCDN([(503, "2.5"), (429, "0")])
    cdn.blobs["f"] = Blob(data)
    async with serve(cdn.app) as server:
        result = await fetch_to_file(
            transport, cdn.link(server, "f"), tmp_path / "f.wav", retry=policy
        )
    assert result.size == SIZE
    assert sleeps == [2.5, 0.0]


async def test_not_found_is_not_retried(transport: Transport, tmp_path: pathlib.Path) -> None:
    cdn = FakeCDN()
    async with serve(cdn.app) as server:
        with pytest.raises(errors.DownloadError, match="404"):
            await fetch_to_file(transport, cdn.link(server, "missing"), tmp_path / "m.wav")
    assert len(cdn.seen) == 1 and leftovers(tmp_path) == []


async def test_local_write_error_is_raised_and_cleans_up(
    transport: Transport, tmp_path: pathlib.Path, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error in the writer thread surfaces as is (not retried), leaving no file."""
    calls = {"n": 0}
    real_write = _sink.DiskWriter._write

    def failing_write(self: Any, chunks: list[bytes]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, chunks)

    monkeypatch.setattr(_sink.DiskWriter, "_write", failing_write)
    cdn = FakeCDN()
    cdn.blobs["f"] = Blob(data)
    async with serve(cdn.app) as server:
        with pytest.raises(OSError, match="No space left"):
            await fetch_to_file(transport, cdn.link(server, "f"), tmp_path / "f.wav")
    assert len(cdn.seen) == 1
    assert leftovers(tmp_path) == []


async def test_failed_download_keeps_an_existing_file_intact(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    dest = tmp_path / "keep.wav"
    dest.write_bytes(b"previous complete file")
    cdn = FakeCDN()
    cdn.blobs["cut"] = Blob(data, cuts=[100] * 100)
    async with serve(cdn.app) as server:
        with pytest.raises(errors.DownloadError):
            await fetch_to_file(transport, cdn.link(server, "cut"), dest)
    assert dest.read_bytes() == b"previous complete file"
    assert leftovers(tmp_path) == ["keep.wav"]


async def test_cancellation_mid_download_leaves_no_file(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    cdn = FakeCDN()
    cdn.blobs["slow"] = Blob(data, stall_at=WRITE_BATCH + 100)
    progress: list[int] = []
    async with serve(cdn.app) as server:
        task = asyncio.create_task(
            fetch_to_file(
                transport,
                cdn.link(server, "slow"),
                tmp_path / "slow.wav",
                progress=lambda n, t: progress.append(n),
            )
        )
        try:
            await asyncio.wait_for(cdn.stalled.wait(), 30)
            for _ in range(500):  # until the first batch reached the .part file
                if progress:
                    break
                await asyncio.sleep(0.01)
            assert progress and any(n.endswith(".part") for n in leftovers(tmp_path))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            cdn.release.set()  # let the server's handler finish either way
    assert leftovers(tmp_path) == []


async def test_redirect_to_another_host_never_carries_the_key(
    transport: Transport, tmp_path: pathlib.Path, data: bytes
) -> None:
    first, second = FakeCDN(), FakeCDN()
    second.blobs["f"] = Blob(data)
    async with serve(first.app) as one, serve(second.app) as two:
        first.redirects["f"] = second.link(two, "f", "sig")
        dest = tmp_path / "f.wav"
        await fetch_to_file(transport, f"{base_url(one)}/redirect/f", dest)
    assert dest.read_bytes() == data
    assert_no_key(first)
    assert_no_key(second)


async def test_link_on_the_api_origin_gets_the_key(tmp_path: pathlib.Path, data: bytes) -> None:
    cdn = FakeCDN()
    cdn.blobs["f"] = Blob(data[:500])
    async with serve(cdn.app) as server:
        t = Transport(
            base_url=base_url(server), auth_headers={"x-api-key": API_KEY}, retry=FAST_RETRY
        )
        try:
            await fetch_to_file(t, cdn.link(server, "f"), tmp_path / "f.wav")
        finally:
            await t.aclose()
    assert cdn.seen[0].headers["x-api-key"] == API_KEY
    assert t.request_counts["GET <api download>"] == 1


# --------------------------------------------------------------------------- client.download


def _serve_outputs(
    api: FakeAPI, cdn: FakeCDN, cdn_server: TestServer, outputs: dict[tuple[str, str], bytes]
) -> None:
    for (name, fmt), content in outputs.items():
        cdn.blobs[f"t1/{name}.{fmt}".replace("/", "_")] = Blob(content)
    api.link_for = lambda task_id, name, fmt: cdn.link(
        cdn_server, f"{task_id}/{name}.{fmt}".replace("/", "_"), "sig"
    )


async def test_download_contains_path_traversal_names(tmp_path: pathlib.Path) -> None:
    names = ["../../evil", "/etc/passwd", "a/b", "", "..", "normal"]
    contents = {(n, "wav"): f"content of {n!r}".encode() for n in names}
    api, cdn = FakeAPI(), FakeCDN()
    async with serve(cdn.app) as cdn_server, api_client(api) as client:
        _serve_outputs(api, cdn, cdn_server, contents)
        api.scripts["t1"] = [task_json("t1", ("vocals", "completed", [(n, "wav") for n in names]))]
        dest = tmp_path / "inside" / "stems"
        paths = await client.download("t1", dest)
    assert {p.name for p in paths} == {
        "_.._evil.wav",
        "_etc_passwd.wav",
        "a_b.wav",
        "output.wav",
        "output_2.wav",
        "normal.wav",
    }
    for path in paths:
        assert path.parent == dest
        assert path.resolve().is_relative_to(dest.resolve())
    # Every file was written inside the destination, and nothing anywhere else.
    everything = files_under(tmp_path)
    assert all(p.parent == pathlib.Path("inside/stems") for p in everything)
    assert len(everything) == len(names)
    assert (dest / "_.._evil.wav").read_bytes() == contents[("../../evil", "wav")]
    assert_no_key(cdn)


async def test_download_names_and_deduplicates(tmp_path: pathlib.Path) -> None:
    api, cdn = FakeAPI(), FakeCDN()
    payload = {
        ("vocals", "wav"): b"v1",
        ("vocals", "mp3"): b"v2",
        ("Vocals", "wav"): b"V",
        ("drums", "wav"): b"d",
    }
    async with serve(cdn.app) as cdn_server, api_client(api) as client:
        _serve_outputs(api, cdn, cdn_server, payload)
        api.scripts["t1"] = [
            task_json(
                "t1",
                ("vocals", "completed", [("vocals", "wav"), ("vocals", "mp3")]),
                ("vocals_hq", "completed", [("vocals", "wav"), ("Vocals", "wav")]),
                ("drums", "completed", [("drums", "wav")]),
                ("bass", "error", []),
            )
        ]
        task = await client.tasks.get("t1")
        paths = await client.download(task, tmp_path)
    assert [p.name for p in paths] == [
        "vocals.wav",
        "vocals.mp3",
        "vocals_2.wav",
        "Vocals_3.wav",
        "drums.wav",
    ]
    assert (tmp_path / "vocals.mp3").read_bytes() == b"v2"
    assert (tmp_path / "drums.wav").read_bytes() == b"d"
    assert leftovers(tmp_path) == sorted(p.name for p in paths)
    assert (tmp_path / "Vocals_3.wav").read_bytes() == b"V"


async def test_download_refreshes_expired_link_by_regetting_the_task(
    tmp_path: pathlib.Path, data: bytes
) -> None:
    api, cdn = FakeAPI(), FakeCDN()
    async with serve(cdn.app) as cdn_server, api_client(api) as client:
        cdn.blobs["t1_vocals.wav"] = Blob(data, tokens={"fresh"})
        links = iter(["stale", "fresh"])
        api.link_for = lambda task_id, name, fmt: cdn.link(
            cdn_server, f"{task_id}_{name}.{fmt}", next(links)
        )
        api.scripts["t1"] = [task_json("t1", ("vocals", "completed", [("vocals", "wav")]))]
        task = await client.tasks.get("t1")  # hands out the stale link
        (path,) = await client.download(task, tmp_path)
    assert path.read_bytes() == data
    assert [s.query["token"] for s in cdn.seen] == ["stale", "fresh"]
    assert len(api.requests("GET", "/tasks/t1")) == 2  # the read, then the refresh
    assert_no_key(cdn)


async def test_download_reports_failures_and_keeps_the_rest(tmp_path: pathlib.Path) -> None:
    api, cdn = FakeAPI(), FakeCDN()
    async with serve(cdn.app) as cdn_server, api_client(api) as client:
        _serve_outputs(api, cdn, cdn_server, {("ok", "wav"): b"fine"})
        api.scripts["t1"] = [
            task_json("t1", ("vocals", "completed", [("ok", "wav"), ("gone", "wav")]))
        ]
        with pytest.raises(errors.DownloadError, match="1 of 2 outputs failed") as info:
            await client.download("t1", tmp_path)
    assert "gone.wav" in str(info.value)
    assert leftovers(tmp_path) == ["ok.wav"]
