"""Uploads: local validation, and streamed multipart bodies received byte-exact on loopback."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pathlib
from typing import Any

import pytest

from audioshake_async import RetryPolicy, errors
from audioshake_async.core.upload import CHUNK_SIZE, ChunkedPayload, UploadDigest, UploadSource
from audioshake_async.core.upload import prepare_upload as prepare_with_check
from audioshake_async.models import MAX_UPLOAD_BYTES
from audioshake_async.tasks.wire import validate_upload

from ._servers import API_KEY, FakeAPI, api_client


async def prepare_upload(
    source: Any, *, filename: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES
) -> UploadSource:
    """``prepare_upload`` with the Tasks API's rule (what ``assets.upload`` applies)."""
    check = functools.partial(validate_upload, max_bytes=max_bytes)
    return await prepare_with_check(source, filename=filename, check=check)


FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
SIZE = 3 * CHUNK_SIZE + 12345  # several chunks and a ragged tail


@pytest.fixture
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def song(tmp_path: pathlib.Path, payload: bytes) -> pathlib.Path:
    path = tmp_path / "song.wav"
    path.write_bytes(payload)
    return path


# --------------------------------------------------------------------------- validation


class _Unseekable(io.RawIOBase):
    name = "live.wav"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


async def test_prepare_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.ValidationError, match="does not exist"):
        await prepare_upload(tmp_path / "nope.wav")


async def test_prepare_directory(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "album.wav"
    folder.mkdir()
    with pytest.raises(errors.ValidationError, match="not a regular file"):
        await prepare_upload(folder)


async def test_prepare_empty_file(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(errors.ValidationError, match="empty"):
        await prepare_upload(empty)


async def test_prepare_over_two_gigabytes_sparse(tmp_path: pathlib.Path) -> None:
    big = tmp_path / "big.wav"
    with open(big, "wb") as handle:  # noqa: ASYNC230
        handle.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(errors.ValidationError, match="upload limit"):
        await prepare_upload(big)
    exact = tmp_path / "exact.wav"
    with open(exact, "wb") as handle:  # noqa: ASYNC230
        handle.truncate(MAX_UPLOAD_BYTES)
    assert (await prepare_upload(exact)).size == MAX_UPLOAD_BYTES


async def test_prepare_max_bytes(song: pathlib.Path) -> None:
    with pytest.raises(errors.ValidationError, match="upload limit"):
        await prepare_upload(song, max_bytes=SIZE - 1)
    assert (await prepare_upload(song, max_bytes=SIZE)).size == SIZE


@pytest.mark.parametrize("name", ["notes.docx", "song", "song.wav.exe", ".wav"])
async def test_prepare_unsupported_extension(tmp_path: pathlib.Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(errors.ValidationError, match="unsupported"):
        await prepare_upload(path)


async def test_prepare_path_with_filename_override(song: pathlib.Path) -> None:
    prepared = await prepare_upload(song, filename="renamed.mp3")
    assert (prepared.filename, prepared.content_type, prepared.size) == (
        "renamed.mp3",
        "audio/mpeg",
        SIZE,
    )
    assert prepared.path == song


async def test_prepare_bytes() -> None:
    with pytest.raises(errors.ValidationError, match="filename"):
        await prepare_upload(b"abc")
    prepared = await prepare_upload(b"abc", filename="a.flac")
    assert (prepared.size, prepared.content_type) == (3, "audio/flac")
    with pytest.raises(errors.ValidationError, match="empty"):
        await prepare_upload(b"", filename="a.flac")


async def test_prepare_file_objects(song: pathlib.Path) -> None:
    with open(song, "rb") as handle:  # noqa: ASYNC230
        handle.seek(100)
        prepared = await prepare_upload(handle)
        assert (prepared.filename, prepared.size, prepared.start) == ("song.wav", SIZE - 100, 100)
        assert handle.tell() == 100  # position restored
    with pytest.raises(errors.ValidationError, match="filename"):
        await prepare_upload(io.BytesIO(b"abc"))
    assert (await prepare_upload(io.BytesIO(b"abc"), filename="x.mp4")).content_type == (
        "video/mp4"
    )
    with pytest.raises(errors.ValidationError, match="non-seekable"):
        await prepare_upload(_Unseekable())  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="cannot upload"):
        await prepare_upload(12345)  # type: ignore[arg-type]


async def test_validation_happens_before_any_request(tmp_path: pathlib.Path) -> None:
    api = FakeAPI()
    async with api_client(api) as client:
        with pytest.raises(errors.ValidationError):
            await client.assets.upload(tmp_path / "missing.wav")
    assert api.seen == []


class _Collector:
    """Stands in for aiohttp's stream writer: collects what a body writes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))


@pytest.mark.parametrize("kind", ["path", "bytes", "fileobj"])
async def test_each_multipart_body_replays_the_whole_file(
    kind: str, song: pathlib.Path, payload: bytes
) -> None:
    handle = open(song, "rb")  # noqa: SIM115, ASYNC230
    source: Any = {"path": song, "bytes": payload, "fileobj": handle}[kind]
    progress: list[int] = []
    try:
        prepared = await prepare_upload(source, filename="song.wav")
        bodies = []
        for _ in range(2):  # two attempts: the second must not find an exhausted source
            collector = _Collector()
            await prepared.multipart(lambda s, t: progress.append(s)).write(collector)  # type: ignore[arg-type]
            bodies.append(b"".join(collector.chunks))
    finally:
        handle.close()
    assert bodies[0].count(payload) == 1
    assert len(bodies[0]) == len(bodies[1])  # same envelope size, same full content
    assert bodies[1].count(payload) == 1
    assert progress.count(SIZE) == 2


# --------------------------------------------------------------------------- loopback uploads


async def test_upload_streamed_byte_exact_with_progress(song: pathlib.Path, payload: bytes) -> None:
    api = FakeAPI()
    progress: list[tuple[int, int]] = []
    async with api_client(api) as client:
        asset = await client.assets.upload(
            song, progress=lambda sent, total: progress.append((sent, total))
        )
    (seen,) = api.requests("POST", "/assets")
    assert seen.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert seen.body_size == SIZE
    assert seen.part_filename == "song.wav"
    assert seen.part_content_type == "audio/wav"
    assert seen.headers["x-api-key"] == API_KEY
    # A sized body, not chunked encoding, and a multipart envelope only slightly bigger.
    assert "chunked" not in seen.headers.get("Transfer-Encoding", "")
    assert SIZE < int(seen.headers["Content-Length"]) < SIZE + 1024
    assert seen.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    sent = [s for s, _ in progress]
    assert sent == sorted(sent) and len(set(sent)) == len(sent)
    assert len(progress) >= 4 and sent[-1] == SIZE
    assert all(total == SIZE for _, total in progress)
    assert all(b - a <= CHUNK_SIZE for a, b in zip([0, *sent], sent, strict=False))
    assert asset.name == "song.wav" and asset.format == "wav" and asset.id.startswith("asset")


@pytest.mark.parametrize("kind", ["path", "bytes", "fileobj"])
async def test_upload_retried_after_503_with_a_fresh_full_body(
    kind: str, song: pathlib.Path, payload: bytes
) -> None:
    api = FakeAPI()
    api.faults["POST /assets"] = [("read+", 503)]
    progress: list[int] = []
    handle = open(song, "rb")  # noqa: SIM115, ASYNC230
    source: Any = {"path": song, "bytes": payload, "fileobj": handle}[kind]
    try:  # (the handle is opened for every kind and closed below)
        async with api_client(api) as client:
            await client.assets.upload(
                source, filename="take2.mp3", progress=lambda s, t: progress.append(s)
            )
    finally:
        handle.close()
    first, second = api.requests("POST", "/assets")
    digest = hashlib.sha256(payload).hexdigest()
    assert first.body_sha256 == second.body_sha256 == digest
    assert first.body_size == second.body_size == SIZE
    assert second.part_filename == "take2.mp3" and second.part_content_type == "audio/mpeg"
    # Progress counts each attempt from its start.
    assert progress.count(SIZE) == 2
    restart = progress.index(SIZE) + 1
    assert progress[restart] <= CHUNK_SIZE


@pytest.mark.parametrize("kind", ["path", "bytes"])
async def test_upload_digest_is_the_sha256_of_the_bytes_sent(
    kind: str, song: pathlib.Path, payload: bytes
) -> None:
    # The first attempt is cut after its body was read; the digest is that of a whole body.
    api = FakeAPI()
    api.faults["POST /assets"] = [("read+", 503)]
    seen: list[int] = []
    digest = UploadDigest(lambda sent, total: seen.append(sent))
    source: Any = {"path": song, "bytes": payload}[kind]
    async with api_client(api) as client:
        await client.assets.upload(source, filename="song.wav", progress=digest)
    _, second = api.requests("POST", "/assets")
    assert digest.sha256 == second.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert seen[-1] == SIZE  # the wrapped progress callback still hears every chunk


async def test_upload_digest_stays_unset_when_the_body_is_cut_short(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "shrinks.wav"
    path.write_bytes(b"RIFF" + bytes(CHUNK_SIZE * 2))
    prepared = await prepare_upload(path)
    path.write_bytes(b"RIFF")  # shorter than announced
    digest = UploadDigest()

    class Sink:
        async def write(self, chunk: bytes) -> None:
            pass

    with pytest.raises(errors.ValidationError, match="changed size"):
        await ChunkedPayload(prepared, digest).write(Sink())  # type: ignore[arg-type]
    assert digest.sha256 is None


async def test_upload_retried_after_dropped_connection(song: pathlib.Path, payload: bytes) -> None:
    api = FakeAPI()
    api.faults["POST /assets"] = ["drop"]
    async with api_client(api) as client:
        asset = await client.assets.upload(song)
    assert len(api.requests("POST", "/assets")) == 2
    assert api.requests("POST", "/assets")[-1].body_sha256 == hashlib.sha256(payload).hexdigest()
    assert asset.id


@pytest.mark.parametrize(
    ("name", "received"),
    [
        ("my song.wav", "my song.wav"),  # not "my%20song.wav"
        ("Björk – jóga.flac", "Björk – jóga.flac"),
        ('say "hi".mp3', 'say "hi".mp3'),
        ("line\r\nX-Evil: 1.wav", "line__X-Evil: 1.wav"),  # no header injection
    ],
)
async def test_upload_filename_arrives_verbatim(payload: bytes, name: str, received: str) -> None:
    api = FakeAPI()
    async with api_client(api) as client:
        asset = await client.assets.upload(payload[:1000], filename=name)
    (seen,) = api.requests("POST", "/assets")
    assert seen.part_filename == received
    assert seen.body_size == 1000
    assert asset.name == received


async def test_upload_exhausted_retries_raise_server_error(song: pathlib.Path) -> None:
    api = FakeAPI()
    api.faults["POST /assets"] = [("read+", 503)] * 10
    async with api_client(api) as client:
        with pytest.raises(errors.ServerError):
            await client.assets.upload(song)
    attempts = api.requests("POST", "/assets")
    assert len(attempts) == FAST.max_retries + 1
    assert all(a.body_size == SIZE for a in attempts)


async def test_upload_insufficient_credits(song: pathlib.Path) -> None:
    api = FakeAPI()

    api.faults["POST /assets"] = [
        (
            "json",
            400,
            {"statusCode": 400, "error": "Bad Request", "message": "Insufficient credits"},
        )
    ]
    async with api_client(api) as client:
        with pytest.raises(errors.InsufficientCreditsError) as info:
            await client.assets.upload(song)
    assert info.value.status == 400
    assert len(api.requests("POST", "/assets")) == 1


async def test_file_shrinking_during_upload_fails_instead_of_sending_short(
    tmp_path: pathlib.Path, payload: bytes
) -> None:
    path = tmp_path / "shrinking.wav"
    path.write_bytes(payload)
    api = FakeAPI()
    truncated = False

    def shrink(sent: int, total: int) -> None:
        nonlocal truncated
        if not truncated:
            truncated = True
            os.truncate(path, CHUNK_SIZE + 10)

    async with api_client(api, retry=RetryPolicy(max_retries=1, base_delay=0.01)) as client:
        with pytest.raises(errors.ValidationError, match="changed size"):
            await client.assets.upload(path, progress=shrink)
    # Not retried (the file will not grow back), and nothing short was accepted as complete.
    (attempt,) = api.requests("POST", "/assets")
    assert attempt.body_size is None
