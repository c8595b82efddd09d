"""FastAPI: one AudioShake client for the app's lifetime, waits resolved by webhook deliveries.

    pip install fastapi uvicorn
    python examples/fastapi_app.py        # serves on http://127.0.0.1:8000
    curl --data-binary @audio/pop_center.wav 'http://127.0.0.1:8000/separate?filename=pop.wav'

Without ``AUDIOSHAKE_API_KEY`` the lifespan starts the local emulator. With ``PUBLIC_URL`` set
(the address AudioShake can reach this app at), the mounted :class:`WebhookReceiver` is
registered for the app's lifetime and every wait is woken by deliveries instead of polling;
without it, waits poll. The body is streamed to a temporary file (no ``python-multipart``
needed), under a name reduced to its last component; a file the API would refuse is a 400.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request

from audioshake_async import AudioShake, AudioShakeError, Target, ValidationError
from audioshake_async.webhooks import WebhookReceiver

TARGETS = [Target("vocals", ["wav"]), Target("instrumental", ["wav"])]


def safe_name(filename: str | None) -> str | None:
    """The last component of a client-sent file name, or None when nothing usable is left."""
    if not filename:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name.startswith(".") or any(ord(c) < 32 or c == "\x7f" for c in name):
        return None
    return name


def create_app(
    api_key: str | None = None, base_url: str | None = None, public_url: str | None = None
) -> FastAPI:
    """The app; without a key (argument or environment) it runs on the local emulator."""
    receiver = WebhookReceiver()
    public_url = public_url or os.environ.get("PUBLIC_URL")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            key, url = api_key, base_url
            if key is None and not os.environ.get("AUDIOSHAKE_API_KEY"):
                from audioshake_async.emulator import Emulator

                emulator = await stack.enter_async_context(Emulator(delay=0.2))
                key, url = emulator.api_key, emulator.base_url
            client = await stack.enter_async_context(AudioShake(key, url))
            app.state.client = client
            app.state.hints = None
            if public_url:
                hook = await client.webhooks.register(receiver.url_for(public_url))
                stack.push_async_callback(client.webhooks.delete, hook.id)
                app.state.hints = receiver
            yield

    app = FastAPI(lifespan=lifespan)
    # Deliveries arrive on the same event loop as the waiters they wake.
    app.mount(receiver.path_prefix, receiver.asgi_app())

    @app.post("/separate")
    async def separate(request: Request, filename: str) -> dict[str, Any]:
        """Stream the posted body to disk, run two models, answer with the output links."""
        client: AudioShake = request.app.state.client
        name = safe_name(filename)
        if name is None:
            raise HTTPException(400, "filename must be a plain file name")
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / name
            async with await anyio.open_file(path, "wb") as handle:
                async for chunk in request.stream():
                    await handle.write(chunk)
            try:
                asset = await client.assets.upload(path)
                task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
                task = await client.tasks.wait(
                    task.id, timeout=600, webhooks=request.app.state.hints
                )
            except ValidationError as exc:
                raise HTTPException(400, str(exc)) from None
            except AudioShakeError as exc:
                raise HTTPException(502, str(exc)) from None
        return {
            "task": task.id,
            "targets": [
                {
                    "model": t.model,
                    "status": t.status,
                    "outputs": [{"name": o.name, "format": o.format} for o in t.output],
                }
                for t in task.targets
            ],
        }

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=8000)
