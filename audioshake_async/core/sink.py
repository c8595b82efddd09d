"""The output seam: where a downloaded output goes, and how it appears there only when complete.

A download reads chunks from the network; an :class:`OutputWriter` consumes them and, on
``commit``, makes the output appear under its final name at once (a rename on disk, the
completion of a multipart upload in a bucket), or on ``abort`` leaves nothing under it. An
:class:`OutputSink` opens writers for names relative to its root and answers "is this output
already there, complete?" for a resumed batch. :class:`DiskSink` is the local directory; the
S3 sink lives in :mod:`audioshake_async.storage.s3`; another store (GCS, Azure) is one more
implementation of these two protocols.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
from collections.abc import Sequence
from typing import IO, Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import attrs

from .parts import open_part, part_path_for, sweep_once

__all__ = ["DiskSink", "DiskWriter", "OutputSink", "OutputWriter", "StoredOutput"]

#: A disk write carries this many bytes of network chunks: one thread hop covers many chunks;
#: 4 MiB rather than 1 MiB: fewer hops, ~90% instead of ~85% of bare aiohttp's loopback
#: throughput. A download holds about two batches (one written while the next one fills).
DISK_BATCH = 4 << 20


@attrs.frozen
class StoredOutput:
    """An output committed under its final name: where (a path or URI), its size and SHA-256."""

    location: str
    size: int
    sha256: str | None


@runtime_checkable
class OutputWriter(Protocol):
    """One output being written; nothing is visible under ``location`` before :meth:`commit`."""

    @property
    def location(self) -> str:
        """The final name (a path or a URI), for messages and results."""

    @property
    def batch_size(self) -> int:
        """How many bytes of network chunks one :meth:`write` should carry (the download
        batches to this; a writer that holds more downstream asks for smaller batches)."""

    async def write(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks`` (a batch of network chunks) after what was written so far."""

    async def restart(self) -> None:
        """Forget everything written: the server sent the body again from its start."""

    async def commit(self) -> StoredOutput:
        """Make the output appear under its final name, complete, at once."""

    async def abort(self) -> None:
        """Drop what was written; nothing is left under the final name (safe to call twice)."""


class OutputSink(Protocol):
    """A place outputs go, by names relative to its root (``<input stem>/<name>.<format>``)."""

    def location(self, relative: str) -> str:
        """The final name of ``relative`` (a path or a URI)."""

    async def open(self, relative: str, *, checksum: bool) -> OutputWriter:
        """A writer for ``relative``; ``checksum`` computes the SHA-256 while writing."""

    async def present(self, relative: str, size: int, sha256: str | None) -> bool:
        """True when ``relative`` is there, complete (its size is ``size``)."""


class DiskWriter:
    """Writes into a hidden part file beside ``destination``, renamed on commit.

    The part file's name is unique to this writer and the file is locked while open
    (:mod:`core.parts`): two processes writing one output never share a part file, and the
    first commit in a directory sweeps the part files that killed writers left there.
    """

    def __init__(
        self,
        destination: pathlib.Path,
        handle: IO[bytes],
        checksum: bool,
        part_path: pathlib.Path,
    ) -> None:
        self.destination = destination
        self.part_path = part_path
        self._handle = handle
        self._checksum = checksum
        self._digest: Any = hashlib.sha256() if checksum else None
        self._size = 0

    @classmethod
    async def open(cls, destination: pathlib.Path, *, checksum: bool) -> DiskWriter:
        """Create the part file (and its directory when missing)."""
        part = part_path_for(destination)
        # Opened on the loop, not in a thread: a cancellation while a worker thread opened the
        # file would drop the handle unclosed. Creating a local file does not block. The
        # directory is made (in a thread) only when missing: a hop costs more than the open.
        try:
            handle = open_part(part)
        except FileNotFoundError:
            await anyio.to_thread.run_sync(
                lambda: destination.parent.mkdir(parents=True, exist_ok=True)
            )
            handle = open_part(part)
        return cls(destination, handle, checksum, part)

    @property
    def location(self) -> str:
        """The final path."""
        return str(self.destination)

    @property
    def batch_size(self) -> int:
        """:data:`DISK_BATCH`."""
        return DISK_BATCH

    def _write(self, chunks: Sequence[bytes]) -> None:
        # The network chunks are written as they are: joining them first would copy every byte.
        self._handle.writelines(chunks)
        if self._digest is not None:
            for chunk in chunks:
                self._digest.update(chunk)
        self._size += sum(len(c) for c in chunks)

    async def write(self, chunks: Sequence[bytes]) -> None:
        """Append in a worker thread (the disk write and the hash both release the GIL)."""
        await anyio.to_thread.run_sync(self._write, chunks)

    def _restart(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._size = 0
        self._digest = hashlib.sha256() if self._checksum else None

    async def restart(self) -> None:
        """Truncate the part file."""
        await anyio.to_thread.run_sync(self._restart)

    def _replace(self) -> None:
        self._handle.close()
        os.replace(self.part_path, self.destination)
        sweep_once(self.destination)

    async def commit(self) -> StoredOutput:
        """Close the part file and rename it into place (one worker-thread hop)."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._replace)
            except BaseException:
                await self.abort()
                raise
        digest = self._digest.hexdigest() if self._digest is not None else None
        return StoredOutput(str(self.destination), self._size, digest)

    async def abort(self) -> None:
        """Close and delete the part file."""

        def drop() -> None:
            self._handle.close()  # a no-op when already closed
            with contextlib.suppress(OSError):
                self.part_path.unlink()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(drop)


class DiskSink:
    """Outputs as files under a local directory (the default)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"DiskSink({str(self.root)!r})"

    def path(self, relative: str) -> pathlib.Path:
        """The final path of ``relative``."""
        return self.root / relative

    def location(self, relative: str) -> str:
        """The final path of ``relative``, as text."""
        return str(self.path(relative))

    async def open(self, relative: str, *, checksum: bool) -> DiskWriter:
        """A part file beside the final path."""
        return await DiskWriter.open(self.path(relative), checksum=checksum)

    async def present(self, relative: str, size: int, sha256: str | None) -> bool:
        """The file exists with the recorded size (a full re-hash would cost a full read)."""
        try:
            stat = await anyio.to_thread.run_sync(os.stat, self.path(relative))
        except OSError:
            return False
        return stat.st_size == size
