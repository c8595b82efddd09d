"""Signed download links and the CDN file server (a separate port, like cdn.audioshake.ai).

Links look like ``http://127.0.0.1:<port>/files/<file-id>/<name>.<format>?expires=<unix>&sig=<hex>``.
The signature is an HMAC-SHA256 over the file id, file name, expiry and a *generation*
counter, keyed with a per-emulator random secret. Bumping the generation
(:meth:`LinkSigner.expire_all`) invalidates every link handed out so far, which is how tests
exercise "link expired, re-fetch the task" without waiting an hour.

Errors are S3-like XML (``<Error><Code>AccessDenied</Code>...``) since the real links are
presigned object-store URLs [INFER]; clients should not expect the API's JSON error body here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote
from xml.sax.saxutils import escape

import aiofiles
import attrs
from aiohttp import web

from .catalog import MIME_TYPES
from .state import Asset

if TYPE_CHECKING:
    from .runtime import Runtime

#: Request headers that must never reach a CDN: their presence means a client leaked its key.
KEY_HEADERS = ("x-api-key", "authorization")


class LinkSigner:
    """Makes and checks signed, expiring links."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.generation = 0

    def _digest(self, file_id: str, filename: str, expires: int, generation: int) -> str:
        message = f"{generation}\n{file_id}\n{filename}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, base_url: str, file_id: str, filename: str, expires: int) -> str:
        """Return the full link for ``filename`` of ``file_id`` valid until ``expires``."""
        sig = self._digest(file_id, filename, expires, self.generation)
        return f"{base_url}/files/{file_id}/{quote(filename)}?expires={expires}&sig={sig}"

    def check(self, file_id: str, filename: str, expires: str, sig: str, now: float) -> str | None:
        """``None`` when the link is valid, else why it is refused."""
        if not expires or not sig:
            return "Query-string authentication requires the expires and sig parameters"
        try:
            expiry = int(expires)
        except ValueError:
            return "Invalid expires parameter"
        expected = self._digest(file_id, filename, expiry, self.generation)
        if not hmac.compare_digest(expected, sig):
            return "The request signature we calculated does not match the signature you provided"
        if now >= expiry:
            return "Request has expired"
        return None

    def expire_all(self) -> None:
        """Invalidate every link issued so far."""
        self.generation += 1


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


def s3_error(status: int, code: str, message: str) -> web.Response:
    """An S3-style XML error response."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _etag(path: Path) -> str:
    # Same recipe as aiohttp's FileResponse, so truncated and normal answers agree.
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _simple_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse ``bytes=a-b`` / ``bytes=a-`` into ``(start, stop)``; ``None`` for other forms."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    stop = min(size, int(last) + 1) if last else size
    if start >= size or start >= stop:
        return None
    return start, stop


async def _serve_truncated(request: web.Request, entry: FileEntry) -> web.StreamResponse:
    """Send the headers of the full answer, about half of the body, then hang up."""
    size = entry.path.stat().st_size
    start, stop, status = 0, size, 200
    headers = {
        "Content-Type": entry.content_type,
        "Accept-Ranges": "bytes",
        "ETag": _etag(entry.path),
    }
    range_header = request.headers.get("Range")
    if range_header:
        parsed = _simple_range(range_header, size)
        if parsed is None:
            return web.FileResponse(entry.path, headers={"Content-Type": entry.content_type})
        start, stop = parsed
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    remaining = (stop - start) // 2
    async with aiofiles.open(entry.path, "rb") as fh:
        await fh.seek(start)
        while remaining > 0:
            chunk = await fh.read(min(remaining, 64 * 1024))
            if not chunk:
                break
            await response.write(chunk)
            remaining -= len(chunk)
    # Closing the transport after a short body is exactly what a flaky CDN looks like to
    # the client: headers promised N bytes, fewer arrived.
    if request.transport is not None:
        request.transport.close()
    return response


def create_cdn_app(rt: Runtime) -> web.Application:
    """The CDN application: ``GET``/``HEAD /files/{file_id}/{filename}``."""

    async def serve(request: web.Request) -> web.StreamResponse:
        stats = rt.store.stats
        stats.cdn_requests += 1
        leaked = [name for name in KEY_HEADERS if name in request.headers]
        if leaked:
            # Only the names: the values are secrets and must not end up in stats or logs.
            stats.cdn_key_leaks += 1
            stats.cdn_key_leak_headers.update(leaked)
        file_id = request.match_info["file_id"]
        filename = request.match_info["filename"]
        problem = rt.signer.check(
            file_id,
            filename,
            request.query.get("expires", ""),
            request.query.get("sig", ""),
            rt.clock(),
        )
        if problem is not None:
            stats.cdn_denied += 1
            return s3_error(403, "AccessDenied", problem)
        entry = rt.files.get(file_id)
        if (
            entry is None
            or entry.filename != filename
            or (entry.asset is not None and entry.asset.expired(rt.clock()))
            or not entry.path.exists()
        ):
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if request.method == "GET" and rt.faults.roll(rt.config.truncate_rate):
            rt.faults.record("truncate")
            return await _serve_truncated(request, entry)
        return web.FileResponse(
            entry.path,
            headers={"Content-Type": entry.content_type, "Cache-Control": "private"},
        )

    app = web.Application()
    app.router.add_get("/files/{file_id}/{filename}", serve, allow_head=True)
    return app


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
