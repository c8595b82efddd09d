"""Streamed uploads of the ``file`` part of a multipart body to disk, and asset expiry.

``POST /assets`` of the Tasks API and ``POST /upload`` of the legacy Jobs API both store
uploads through :class:`AssetUploads`: in constant memory, 413 over ``max_upload_bytes``
(Content-Length up front, then while streaming), nothing left on disk when an upload fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path, PurePosixPath, PureWindowsPath

import aiofiles
from aiohttp import BodyPartReader, web

from .catalog import MIME_TYPES, format_of
from .errors import ApiError
from .files import FileEntry, remove_tree
from .runtime import Runtime
from .state import Asset
from .validation import check_credits

UPLOAD_CHUNK = 256 * 1024
#: Bytes of multipart framing tolerated on top of ``max_upload_bytes`` in the up-front
#: Content-Length check (the exact file size is enforced while streaming).
MULTIPART_SLACK = 64 * 1024
#: Stored name of an upload whose part filename names no file (``""``, ``"."``, ``".."``).
DEFAULT_UPLOAD_NAME = "upload"

logger = logging.getLogger("audioshake_async.emulator")


def _safe_filename(name: str | None) -> str:
    """The last path component of a part filename, or ``"upload"`` when it names no file."""
    # Both separators: a Windows client may send C:\music\song.wav as the part filename.
    base = PureWindowsPath(PurePosixPath(name or "").name).name.strip()
    # "..", "." (and "...") would make the stored path the asset folder or its parent.
    if not base.strip("."):
        return DEFAULT_UPLOAD_NAME
    return base


def _storage_error(name: str, exc: BaseException) -> ApiError:
    """The 500 (in the error envelope) answering an upload the disk could not take."""
    logger.warning("emulator: could not store upload %r: %s", name, exc)
    return ApiError(500, "Could not store the uploaded file")


def _delete_asset_files(paths: list[Path]) -> None:
    """Delete expired assets' files and their folders (runs in a worker thread)."""
    for path in paths:
        path.unlink(missing_ok=True)
        # Only the asset's own folder, and only once empty: never more than was created.
        with contextlib.suppress(OSError):
            path.parent.rmdir()


class AssetUploads:
    """Stores uploaded files as assets of one emulator, and deletes them once expired."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def sweep_expired_assets(self) -> None:
        """Delete expired assets' files and forget them (documented: deleted after 72 h)."""
        expired = self.rt.store.pop_expired_assets()
        if not expired:
            return  # the usual case: no thread hop
        for asset in expired:
            self.rt.files.remove(asset.file_id)
        await asyncio.to_thread(_delete_asset_files, [a.path for a in expired])

    async def receive(self, request: web.Request) -> Asset:
        """Stream the ``file`` part to disk, never holding it in memory; the new asset."""
        check_credits(self.rt.config.credits)
        await self.sweep_expired_assets()
        limit = self.rt.config.max_upload_bytes
        stats = self.rt.store.stats
        if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
            stats.uploads_rejected += 1
            raise ApiError(413, f"File exceeds the maximum size of {limit} bytes", close=True)
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "Request must be multipart/form-data with a 'file' field")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise ApiError(400, f"Malformed multipart body: {exc}") from None
        asset: Asset | None = None
        while True:
            part = await reader.next()
            if part is None:
                break
            if (
                asset is None
                and isinstance(part, BodyPartReader)
                and part.name == "file"
                and part.filename is not None
            ):
                asset = await self._store_part(part, limit)
            else:
                await part.release()  # reads and discards: other fields are ignored
        if asset is None:
            raise ApiError(400, "body must have required property 'file'")
        self.rt.store.add_asset(asset)
        stats.bytes_uploaded += asset.size
        self.rt.files.add(
            asset.file_id, FileEntry(asset.path, asset.name, asset.mime_type, asset=asset)
        )
        return asset

    async def _store_part(self, part: BodyPartReader, limit: int) -> Asset:
        name = _safe_filename(part.filename)
        part_type = part.headers.get("Content-Type")
        fmt = format_of(name, part_type)
        if fmt is None:
            await part.release()
            raise ApiError(400, f"Unsupported file format: {name}")
        store = self.rt.store
        asset_id = store.ids.new()
        folder = self.rt.workdir / "assets" / asset_id
        path = folder / name
        size = 0
        try:
            try:
                # Filesystem calls go to a thread: a slow or busy disk must not stall the loop.
                await asyncio.to_thread(folder.mkdir, parents=True)
                fh = await aiofiles.open(path, "wb")
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
                raise _storage_error(name, exc) from exc
            try:
                while True:
                    chunk = await part.read_chunk(UPLOAD_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        store.stats.uploads_rejected += 1
                        raise ApiError(
                            413, f"File exceeds the maximum size of {limit} bytes", close=True
                        )
                    try:
                        await fh.write(chunk)
                    except OSError as exc:
                        raise _storage_error(name, exc) from exc
            finally:
                await fh.close()
        except BaseException:
            # Over the limit, client gone, cancelled, or the disk failed: no partial file
            # stays behind. remove_tree is shielded: a second cancellation must not leave it.
            # Errors ignored: cleanup runs while another error propagates, never replaces it.
            with contextlib.suppress(Exception):
                await remove_tree(folder)
            raise
        now = self.rt.clock()
        mime = part_type.split(";")[0].strip() if part_type else ""
        if not mime or mime == "application/octet-stream":
            mime = MIME_TYPES[fmt].split(";")[0]
        return Asset(
            id=asset_id,
            name=name,
            format=fmt,
            mime_type=mime,
            path=path,
            size=size,
            created_at=now,
            expires_at=now + self.rt.config.asset_ttl,
            file_id=store.ids.new(),
        )
