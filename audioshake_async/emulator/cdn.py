"""The CDN file server (a separate port, like cdn.audioshake.ai) behind the signed links.

``GET``/``HEAD /files/<file-id>/<name>.<format>?expires=&sig=``: the link is checked with the
emulator's :class:`~.links.LinkSigner`, the file looked up in its :class:`~.files.FileRegistry`.
Refusals are the S3-like XML of :func:`~.links.s3_error`.
"""

from __future__ import annotations

from pathlib import Path

import aiofiles
from aiohttp import web

from .files import FileEntry
from .links import KEY_HEADERS, s3_error
from .runtime import Runtime


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
