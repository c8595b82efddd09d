"""storage/s3.py against a real S3-compatible server (moto's, on loopback): multipart writes
that appear only when complete and leave no incomplete upload, paged listing, presigned GETs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.request

import anyio
import anyio.to_thread
import pytest

from audioshake_async import errors
from audioshake_async.core.download import fetch_to
from audioshake_async.core.sink import DISK_BATCH, OutputWriter
from audioshake_async.core.transport import Transport
from audioshake_async.storage.s3 import (
    WRITE_BATCH,
    S3Settings,
    S3Sink,
    S3Stores,
    S3Uri,
    S3Writer,
)

from ._s3 import S3Server
from ._servers import FAST_RETRY, Blob, FakeCDN, serve

MiB = 1 << 20


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def payload(n: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (n // len(block) + 1))[:n]


async def test_a_multipart_write_appears_whole_only_on_commit(s3: S3Server) -> None:
    bucket = s3.bucket()
    data = payload(13 * MiB + 123)  # three 5 MiB parts, the last one short
    stores = S3Stores(S3Settings(part_size=5 * MiB, parts_in_flight=2))
    writer = S3Writer(stores, S3Uri(bucket, "out/song/vocals.wav"), checksum=True)
    assert isinstance(writer, OutputWriter)
    pieces = chunks_of(data, 1 * MiB)
    for start in range(0, len(pieces), 4):
        await writer.write(pieces[start : start + 4])
        assert s3.keys(bucket) == []  # nothing under the final key before the commit
    stored = await writer.commit()
    assert stored.location == f"s3://{bucket}/out/song/vocals.wav"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.get(bucket, "out/song/vocals.wav") == data
    assert s3.incomplete_uploads(bucket) == []
    head = s3.client.head_object(Bucket=bucket, Key="out/song/vocals.wav")
    assert head["ContentType"] == "audio/x-wav"


async def test_odd_chunks_across_part_boundaries_are_byte_exact(s3: S3Server) -> None:
    """Chunk sizes that never line up with the 1 MiB pieces or the 5 MiB parts."""
    bucket = s3.bucket()
    data = payload(16 * MiB + 7, seed=3)
    writer = S3Writer(S3Stores(), S3Uri(bucket, "odd/vocals.wav"), checksum=True)
    sizes = [1, 4093, 65537, 262143, 1048577, 3 * MiB + 1]
    pieces, start, turn = [], 0, 0
    while start < len(data):
        step = sizes[turn % len(sizes)]
        pieces.append(data[start : start + step])
        start, turn = start + step, turn + 1
    for first in range(0, len(pieces), 5):
        await writer.write(pieces[first : first + 5])
    stored = await writer.commit()
    assert s3.get(bucket, "odd/vocals.wav") == data
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.incomplete_uploads(bucket) == []


async def test_a_cut_download_resumed_into_s3_is_byte_exact(s3: S3Server) -> None:
    """CDN -> S3 through ``fetch_to``: batches of the writer's size (smaller than a disk
    write's: the parts hold memory too), a cut mid-part resumed with Range."""
    assert WRITE_BATCH < DISK_BATCH
    bucket = s3.bucket()
    data = payload(12 * MiB + 333, seed=4)
    cdn = FakeCDN(ranges=True)
    cdn.blobs["v"] = Blob(data, cuts=[7 * MiB + 11])
    writer = S3Writer(S3Stores(), S3Uri(bucket, "cdn/vocals.wav"), checksum=True)
    assert writer.batch_size == WRITE_BATCH
    transport = Transport(
        base_url="http://127.0.0.1:9", auth_headers={}, retry=FAST_RETRY, rate_limit=None
    )
    try:
        async with serve(cdn.app) as server:
            stored = await fetch_to(transport, cdn.link(server, "v"), writer)
    finally:
        await transport.aclose()
    ranges = [seen.headers.get("Range") for seen in cdn.seen]
    # Resumed from what arrived before the drop (bytes still in the socket may be lost).
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] is not None
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 7 * MiB + 11
    assert s3.get(bucket, "cdn/vocals.wav") == data
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.incomplete_uploads(bucket) == []


async def test_an_aborted_write_leaves_no_object_and_no_incomplete_upload(s3: S3Server) -> None:
    bucket = s3.bucket()
    stores = S3Stores(S3Settings(part_size=5 * MiB, parts_in_flight=1))
    writer = S3Writer(stores, S3Uri(bucket, "x/drums.wav"), checksum=True)
    await writer.write(chunks_of(payload(12 * MiB), MiB))
    await writer.abort()
    await writer.abort()  # twice is harmless
    assert s3.keys(bucket) == []
    assert s3.incomplete_uploads(bucket) == []


async def test_a_restart_drops_what_was_written(s3: S3Server) -> None:
    bucket = s3.bucket()
    stores = S3Stores(S3Settings(part_size=5 * MiB))
    writer = S3Writer(stores, S3Uri(bucket, "k/bass.wav"), checksum=True)
    await writer.write([payload(6 * MiB, seed=1)])
    await writer.restart()
    data = payload(2 * MiB, seed=2)
    await writer.write([data])
    stored = await writer.commit()
    assert s3.get(bucket, "k/bass.wav") == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert s3.incomplete_uploads(bucket) == []


async def test_an_empty_output_is_committed_as_an_empty_object(s3: S3Server) -> None:
    bucket = s3.bucket()
    writer = S3Writer(S3Stores(), S3Uri(bucket, "e/empty.json"), checksum=True)
    stored = await writer.commit()
    assert stored.size == 0 and s3.get(bucket, "e/empty.json") == b""


@pytest.mark.parametrize("size", [1024, 6 * MiB])
async def test_a_write_to_a_missing_bucket_fails_with_a_storage_error(
    s3: S3Server, size: int
) -> None:
    """One PUT (small) or a multipart upload (past one part): either way a StorageError."""
    writer = S3Writer(S3Stores(), S3Uri("no-such-bucket-here", "a.wav"), checksum=False)
    with pytest.raises(errors.StorageError):
        await writer.write([b"x" * size])
        await writer.commit()


async def test_an_output_within_one_part_is_one_put_and_never_a_multipart_upload(
    s3: S3Server,
) -> None:
    bucket = s3.bucket()
    writer = S3Writer(S3Stores(), S3Uri(bucket, "s/vocals.wav"), checksum=True)
    await writer.write([b"a" * 1000, b"b" * 1000])
    assert s3.incomplete_uploads(bucket) == [] and s3.keys(bucket) == []
    await writer.commit()
    assert s3.get(bucket, "s/vocals.wav") == b"a" * 1000 + b"b" * 1000


async def test_the_sink_says_present_by_size_with_one_head(s3: S3Server) -> None:
    bucket = s3.bucket()
    s3.put(bucket, "stems/song/vocals.wav", b"12345")
    sink = S3Sink(f"s3://{bucket}/stems/", S3Stores())
    assert sink.location("song/vocals.wav") == f"s3://{bucket}/stems/song/vocals.wav"
    assert await sink.present("song/vocals.wav", 5, None)
    assert not await sink.present("song/vocals.wav", 6, None)
    assert not await sink.present("song/drums.wav", 5, None)


async def test_listing_is_lazy_paged_filtered_and_skips_the_output_prefix(s3: S3Server) -> None:
    bucket = s3.bucket()
    for key in [
        "cat/a.wav",
        "cat/b.MP3",
        "cat/notes.txt",
        "cat/.hidden.wav",
        "cat/sub/c.flac",
        "cat/stems/a/vocals.wav",
        "catalogue/d.wav",  # a sibling prefix, not under cat/
    ]:
        s3.put(bucket, key, b"data")
    stores = S3Stores()
    found = [
        o.uri
        async for o in stores.list(
            f"s3://{bucket}/cat/",
            {".wav", ".mp3", ".flac"},
            exclude=S3Uri(bucket, "cat/stems"),
            page_size=2,
        )
    ]
    assert found == [f"s3://{bucket}/cat/{k}" for k in ("a.wav", "b.MP3", "sub/c.flac")]
    head = await stores.head(f"s3://{bucket}/cat/a.wav")
    assert head.size == 4 and head.etag.strip('"') == hashlib.md5(b"data").hexdigest()
    with pytest.raises(errors.StorageNotFoundError):
        await stores.head(f"s3://{bucket}/cat/missing.wav")


async def test_a_presigned_url_fetches_the_object_and_expires(s3: S3Server) -> None:
    bucket = s3.bucket()
    s3.put(bucket, "in/song.wav", b"RIFF....")
    stores = S3Stores(S3Settings(url_lifetime=600))
    url = await stores.presign(f"s3://{bucket}/in/song.wav")
    assert url.startswith(f"{s3.endpoint}/{bucket}/in/song.wav?")
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url

    def fetch() -> bytes:
        with urllib.request.urlopen(url) as response:
            return bytes(response.read())

    assert await anyio.to_thread.run_sync(fetch) == b"RIFF...."


def test_settings_are_checked_before_any_request() -> None:
    with pytest.raises(errors.ValidationError, match="url_lifetime"):
        S3Settings(url_lifetime=8 * 24 * 3600)
    with pytest.raises(errors.ValidationError, match="5 MiB"):
        S3Settings(part_size=MiB)
    with pytest.raises(errors.ValidationError, match="endpoint"):
        S3Settings(endpoint="localhost:9000")
    with pytest.raises(errors.ValidationError):
        S3Uri.parse("s3:///key")
    assert S3Uri.parse("s3://b/p/").is_prefix and not S3Uri.parse("s3://b/k.wav").is_prefix


def test_without_the_extra_a_clear_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "obstore", None)  # import obstore -> ImportError
    with pytest.raises(errors.ConfigurationError, match=r"audioshake-async\[s3\]"):
        S3Stores().store("bucket")


def test_the_core_never_imports_the_s3_library() -> None:
    code = (
        "import sys, audioshake_async, audioshake_async.cli.main, audioshake_async.batch;"
        "import audioshake_async.storage.s3;"
        "print('obstore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_the_cli_expansion_passes_s3_locations_through_once() -> None:
    from audioshake_async.batch import expand_inputs

    got = [p async for p in expand_inputs(["s3://b/k.wav", "s3://b/p/", "s3://b/k.wav"])]
    assert got == ["s3://b/k.wav", "s3://b/p/"]


EXIT_CHILD = """
import asyncio, sys
from audioshake_async.cli.main import exit_process
from audioshake_async.storage.s3 import S3Settings, S3Stores, S3Uri, S3Writer
async def main():
    writer = S3Writer(S3Stores(S3Settings(endpoint=sys.argv[1])), S3Uri(sys.argv[2], sys.argv[3]),
                      checksum=True)
    for _ in range(3):
        await writer.write([b"z" * (4 << 20)])
    await writer.commit()
    print("committed", flush=True)
asyncio.run(main())
exit_process(int(sys.argv[4]))
"""


def test_the_cli_exit_after_a_multipart_upload_reports_its_own_status(s3: S3Server) -> None:
    """obstore 0.12 sometimes aborts the interpreter while it finalizes after multipart uploads
    (SIGABRT, status 134): the CLI's exit skips finalization once obstore is loaded. Several
    runs, each status as asked (0 and 1), the output committed every time."""
    bucket = s3.bucket()
    for run in range(6):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_CHILD, s3.endpoint, bucket, f"k{run}.wav", str(run % 2)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (done.returncode, done.stdout) == (run % 2, "committed\n"), done.stderr[-2000:]
    assert len(s3.keys(bucket)) == 6 and s3.incomplete_uploads(bucket) == []
