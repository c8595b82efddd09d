"""The Music.AI storage host: signed upload slots and result files, on a port of its own.

``PUT /files/{id}/input`` streams an upload to disk in constant memory; ``GET``/``HEAD
/files/{id}/{name}`` serve inputs and results with ``Range``. Requests carrying an API key
header are counted: a client must never send it here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from typing import Any

import attrs
from aiohttp import web

from ..files import FileEntry
from ..links import KEY_HEADERS, LinkSigner, s3_error
from .state import UPLOAD_NAME, Blob, MusicAIState

#: Bytes gathered from the socket before one write to disk (one thread hop per batch).
WRITE_BATCH = 1 << 20


def _write_blob(handle: Any, digest: Any, chunks: list[bytes]) -> None:
    handle.writelines(chunks)
    for chunk in chunks:
        digest.update(chunk)


class StorageHost:
    """Route handlers of the storage host."""

    def __init__(self, state: MusicAIState) -> None:
        self._state = state

    def app(self) -> web.Application:
        """The storage application."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_put("/files/{file_id}/{filename}", self._put_file)
        app.router.add_get("/files/{file_id}/{filename}", self._get_file, allow_head=True)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        state = self._state
        state.storage_requests[request.method] += 1
        for name in KEY_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                # Names only: a value is a secret and must not end up in stats or logs.
                state.key_headers[name] += 1
                if state.config.api_key in value:
                    state.counters["storage_api_key_seen"] += 1
        response: web.StreamResponse = await handler(request)
        return response

    def _check(self, signer: LinkSigner, request: web.Request) -> web.Response | None:
        problem = signer.check(
            request.match_info["file_id"],
            request.match_info["filename"],
            request.query.get("expires", ""),
            request.query.get("sig", ""),
            time.time(),
        )
        if problem is None:
            return None
        self._state.counters["storage_denied"] += 1
        return s3_error(403, "AccessDenied", problem)

    async def _put_file(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        denied = self._check(state.put_signer, request)
        if denied is not None:
            return denied
        file_id = request.match_info["file_id"]
        if file_id not in state.blobs or request.match_info["filename"] != UPLOAD_NAME:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if state.config.put_failures > 0:
            state.config = attrs.evolve(state.config, put_failures=state.config.put_failures - 1)
            state.faults["put_failure"] += 1
            async for _ in request.content.iter_chunked(256 * 1024):
                pass
            return s3_error(503, "SlowDown", "Please reduce your request rate.")
        limit = state.config.max_upload_bytes
        declared = request.content_length
        if limit is not None and declared is not None and declared > limit:
            response = s3_error(413, "EntityTooLarge", f"uploads are limited to {limit} bytes")
            response.force_close()
            return response
        workdir = state.running()
        final = workdir / "blobs" / file_id
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(f"{file_id}.{uuid.uuid4().hex}.part")
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        received = 0
        # Opened on the loop: creating a local file does not block, and the handle is closed
        # in ``finally`` whatever happens to the request.
        handle = open(part, "wb")  # noqa: ASYNC230, SIM115
        try:
            batch: list[bytes] = []
            batched = 0
            # Streamed in batches: the body never sits in memory whatever its size.
            async for chunk in request.content.iter_chunked(256 * 1024):
                batch.append(chunk)
                batched += len(chunk)
                received += len(chunk)
                if limit is not None and received > limit:
                    response = s3_error(413, "EntityTooLarge", f"uploads are limited to {limit}")
                    response.force_close()
                    return response
                if batched >= WRITE_BATCH:
                    await loop.run_in_executor(None, _write_blob, handle, digest, batch)
                    batch, batched = [], 0
            if batch:
                await loop.run_in_executor(None, _write_blob, handle, digest, batch)
        finally:
            handle.close()
            if declared is not None and received != declared:
                part.unlink(missing_ok=True)
        if declared is not None and received != declared:
            return s3_error(400, "IncompleteBody", f"got {received} of {declared} bytes")
        os.replace(part, final)
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        state.blobs[file_id] = Blob(final, received, digest.hexdigest(), content_type)
        state.counters["uploads"] += 1
        state.counters["upload_bytes"] += received
        return web.Response(status=200)

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        denied = self._check(state.get_signer, request)
        if denied is not None:
            return denied
        file_id = request.match_info["file_id"]
        entry = state.files.get(file_id)
        if entry is None:
            blob = state.blobs.get(file_id)
            if blob is not None:
                entry = FileEntry(blob.path, UPLOAD_NAME, blob.content_type)
        if entry is None or entry.filename != request.match_info["filename"]:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return web.FileResponse(entry.path, headers={"Content-Type": entry.content_type})
