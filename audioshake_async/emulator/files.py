"""Files the emulators serve: what a file id maps to, and the disk chores around them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import attrs

from .catalog import MIME_TYPES
from .state import Asset


@attrs.frozen
class FileEntry:
    """A file the CDN may serve."""

    path: Path
    filename: str
    content_type: str
    #: Source files of assets vanish with their asset.
    asset: Asset | None = None


class FileRegistry:
    """Maps file ids (the first path segment of a link) to files on disk."""

    def __init__(self) -> None:
        self._files: dict[str, FileEntry] = {}

    def add(self, file_id: str, entry: FileEntry) -> None:
        """Make ``entry`` downloadable under ``file_id``."""
        self._files[file_id] = entry

    def get(self, file_id: str) -> FileEntry | None:
        """The entry for ``file_id`` if any."""
        return self._files.get(file_id)

    def remove(self, file_id: str) -> None:
        """Stop serving ``file_id``."""
        self._files.pop(file_id, None)


def content_type_for(filename: str) -> str:
    """Content type from the extension (``application/octet-stream`` when unknown)."""
    ext = filename.rpartition(".")[2].lower()
    return MIME_TYPES.get(ext, "application/octet-stream")


def file_sha256(path: Path, chunk: int = 1024 * 1024) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def new_file_id() -> str:
    """A random, unguessable file id (the link's first path segment)."""
    return os.urandom(12).hex()


async def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively in a worker thread (thousands of files block for a while)."""
    try:
        # Shielded: a cancelled aclose still removes the directory, in the background.
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, path, ignore_errors=True))
    except RuntimeError:
        # The loop's default executor is already shut down: remove it here instead.
        shutil.rmtree(path, ignore_errors=True)
