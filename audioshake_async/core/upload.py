"""Streaming multipart upload bodies, rebuilt for every attempt, with progress.

A path is reopened on each attempt and read in chunks off the event loop (worker threads), so a 2 GB
upload holds one chunk in memory and a retry never replays an exhausted handle. With an
:class:`UploadDigest` as the progress callback, each chunk is also hashed (SHA-256) in the same
worker-thread hop that read it: the file is read once, not once to hash and once to send.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import stat as stat_module
from collections.abc import Callable
from typing import BinaryIO

import anyio
import anyio.to_thread
import attrs
from aiohttp import MultipartWriter, hdrs
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from .. import errors

__all__ = ["ProgressCallback", "UploadCheck", "UploadDigest", "UploadSource", "prepare_upload"]

#: A service's rule for one upload: ``(file name, size) -> content type``, raising
#: :class:`~audioshake_async.errors.ValidationError` for a file the service does not take.
UploadCheck = Callable[[str, int], str]

#: Called with (bytes sent so far in this attempt, total bytes).
ProgressCallback = Callable[[int, int], None]

CHUNK_SIZE = 1 << 20

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class UploadDigest:
    """A progress callback that also learns the SHA-256 of the bytes an attempt sent.

    ``sha256`` is set when an attempt has streamed the whole body (a retried attempt sets it
    again); it stays None when the body never went through :class:`ChunkedPayload`.
    """

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self._progress = progress
        self.sha256: str | None = None

    def __call__(self, sent: int, total: int) -> None:
        if self._progress is not None:
            self._progress(sent, total)


class ChunkedPayload(Payload):
    """A payload read chunk by chunk from a fresh source, reporting progress."""

    def __init__(self, source: UploadSource, progress: ProgressCallback | None) -> None:
        super().__init__(source, content_type=source.content_type, filename=source.filename)
        self._source = source
        self._progress = progress
        self._size = source.size

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed upload has no text form")

    async def write(self, writer: AbstractStreamWriter) -> None:
        sent = 0
        total = self._source.size
        digest = hashlib.sha256() if isinstance(self._progress, UploadDigest) else None
        reader = await self._source.open()
        try:
            while sent < total:
                chunk = await reader.read(min(CHUNK_SIZE, total - sent), digest)
                if not chunk:
                    break
                await writer.write(chunk)
                sent += len(chunk)
                if self._progress is not None:
                    self._progress(sent, total)
        finally:
            # A synchronous close: an attempt cut short (dropped connection, cancellation)
            # releases its file handle here, whatever happens to this task next.
            reader.close()
        if sent != total:
            # The file shrank under us: fail the attempt rather than send a short body.
            raise errors.ValidationError(
                f"{self._source.filename!r} changed size during upload ({sent} of {total} bytes)"
            )
        if digest is not None:
            assert isinstance(self._progress, UploadDigest)
            self._progress.sha256 = digest.hexdigest()


class _Reader:
    """Reads a binary handle off the event loop; closes it (when owned) synchronously."""

    def __init__(self, handle: BinaryIO, *, owned: bool, in_memory: bool = False) -> None:
        self._handle = handle
        self._owned = owned
        self._in_memory = in_memory

    async def read(self, size: int, digest: hashlib._Hash | None = None) -> bytes:
        if self._in_memory:
            data = self._handle.read(size)
            if digest is not None:
                digest.update(data)
            return data

        def read_and_hash() -> bytes:
            data = self._handle.read(size)
            if digest is not None:
                # In the worker thread: hashlib releases the GIL on large buffers.
                digest.update(data)
            return data

        problem: OSError | None = None
        try:
            return await anyio.to_thread.run_sync(read_and_hash)
        except OSError as exc:
            problem = exc
        raise _file_error(getattr(self._handle, "name", "upload"), problem)

    def close(self) -> None:
        if self._owned:
            self._handle.close()


@attrs.define
class UploadSource:
    """Where upload bytes come from: a path, in-memory bytes, or a binary file object."""

    filename: str
    size: int
    content_type: str
    path: pathlib.Path | None = None
    data: bytes | None = attrs.field(default=None, repr=False)
    fileobj: BinaryIO | None = attrs.field(default=None, repr=False)
    start: int = 0

    async def open(self) -> _Reader:
        """A reader positioned at the content's start, fresh for this attempt."""
        if self.path is not None:
            # Opened on the loop, not in a thread: a cancellation while a worker thread opened
            # the file would drop the handle unclosed. Opening a local file does not block.
            problem: OSError | None = None
            try:
                return _Reader(open(self.path, "rb"), owned=True)  # noqa: ASYNC230
            except OSError as exc:
                problem = exc
            # A client-side fault (vanished, permission denied, a directory now): retrying the
            # request cannot help, so it is a ValidationError, which the transport never retries.
            raise _file_error(str(self.path), problem)
        if self.data is not None:
            return _Reader(io.BytesIO(self.data), owned=True, in_memory=True)
        assert self.fileobj is not None
        await anyio.to_thread.run_sync(self.fileobj.seek, self.start)
        return _Reader(self.fileobj, owned=False)

    def multipart(self, progress: ProgressCallback | None = None) -> MultipartWriter:
        """A fresh ``multipart/form-data`` body with the file in field ``file``."""
        writer = MultipartWriter("form-data")
        payload = ChunkedPayload(self, progress)
        # aiohttp's default quoting percent-encodes the file name ("my song.wav" arrives as
        # "my%20song.wav": RFC 7578 servers take it literally). Send UTF-8 as curl and browsers
        # do, with control characters replaced so a name cannot break the part's headers.
        header_name = _CONTROL_CHARS.sub("_", self.filename)
        payload.set_content_disposition(
            "form-data", quote_fields=False, name="file", filename=header_name
        )
        writer.append_payload(payload)
        # Content-Length is known, so the server sees a sized body instead of chunked encoding.
        writer.headers.pop(hdrs.TRANSFER_ENCODING, None)
        return writer


def _file_error(name: object, problem: OSError) -> errors.ValidationError:
    """The ValidationError for a local file that cannot be read (raised outside ``except``)."""
    if isinstance(problem, FileNotFoundError):
        return errors.ValidationError(f"{str(name)!r} no longer exists")
    reason = problem.strerror or type(problem).__name__
    return errors.ValidationError(f"{str(name)!r} cannot be read: {reason}")


def _check_readable(path: pathlib.Path) -> None:
    """Open and close ``path``: stat() succeeds on a file its owner may not read."""
    descriptor = os.open(path, os.O_RDONLY)
    os.close(descriptor)


async def prepare_upload(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    check: UploadCheck,
    filename: str | None = None,
) -> UploadSource:
    """Check an upload before any request: a readable regular file (or bytes, or a seekable
    file object) that the service's ``check`` accepts by name and size."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not filename:
            raise errors.ValidationError("uploading bytes needs a filename (for its type)")
        data = bytes(source)
        content_type = check(filename, len(data))
        return UploadSource(filename, len(data), content_type, data=data)
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        problem: OSError | None = None
        try:
            stat = await anyio.Path(path).stat()
            if stat_module.S_ISREG(stat.st_mode):
                await anyio.to_thread.run_sync(_check_readable, path)
        except FileNotFoundError:
            raise errors.ValidationError(f"{str(path)!r} does not exist") from None
        except OSError as exc:
            problem = exc
        if problem is not None:
            raise _file_error(path, problem)
        if not stat_module.S_ISREG(stat.st_mode):
            raise errors.ValidationError(f"{str(path)!r} is not a regular file")
        name = filename or path.name
        content_type = check(name, stat.st_size)
        return UploadSource(name, stat.st_size, content_type, path=path)
    if hasattr(source, "read"):
        name = filename or os.path.basename(str(getattr(source, "name", "") or ""))
        if not name:
            raise errors.ValidationError("uploading a file object needs a filename (for its type)")
        if not getattr(source, "seekable", lambda: False)():
            # A retry must resend from the start, and the size must be known up front.
            raise errors.ValidationError(
                f"{name!r}: a non-seekable stream has no known size; pass a path or bytes"
            )
        start = source.tell()
        size = source.seek(0, io.SEEK_END) - start
        source.seek(start)
        content_type = check(name, size)
        return UploadSource(name, size, content_type, fileobj=source, start=start)
    raise errors.ValidationError(
        f"cannot upload a {type(source).__name__}: give a path, bytes or a binary file"
    )
