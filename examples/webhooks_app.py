"""Receive AudioShake webhooks inside an aiohttp app: waits resolve from deliveries, not polls.

    python examples/webhooks_app.py                    # the local emulator delivers to this app
    curl -F file=@examples/audio/pop_center.wav http://127.0.0.1:8080/separate

Against the real API, AudioShake must reach this server: set ``PUBLIC_URL`` to the public base
URL that forwards to it (a reverse proxy or tunnel), and ``AUDIOSHAKE_API_KEY``. The app
registers ``PUBLIC_URL/audioshake/webhooks/<secret token>`` with ``POST /webhooks`` when it
starts and removes it when it stops. ``POST /webhooks`` is inferred from the migration guide:
with ``WEBHOOK_NO_REGISTER=1`` the app only prints the URL to set in the dashboard (Settings >
Webhook URL), the documented route. Set ``AUDIOSHAKE_WEBHOOK_TOKEN`` (16+ characters) to keep
the same URL across restarts.

Deliveries are unsigned, so they only wake the waiting handler: it then confirms the task with
one authenticated ``GET /tasks/{id}``, and a slow safety poll covers lost deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator

import aiofiles
import aiohttp
from aiohttp import web

from audioshake_async import AudioShake, AudioShakeError, Target
from audioshake_async.webhooks import WebhookReceiver

CLIENT = web.AppKey("client", AudioShake)
RECEIVER = web.AppKey("receiver", WebhookReceiver)
SAFETY_POLL = web.AppKey("safety_poll", float)


def make_app(
    public_url: str,
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    register: bool = True,
    safety_poll: float = 180.0,
) -> web.Application:
    """The app: ``/separate`` plus the webhook route, one client and one receiver for all."""
    app = web.Application(client_max_size=2 * 1024**3)
    receiver = WebhookReceiver(token=os.environ.get("AUDIOSHAKE_WEBHOOK_TOKEN") or None)
    receiver.add_routes(app)
    app[RECEIVER] = receiver
    app[SAFETY_POLL] = safety_poll

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        url = receiver.url_for(public_url)
        async with AudioShake(api_key, base_url) as client:
            app[CLIENT] = client
            if not register:
                print(f"set this webhook URL in the AudioShake dashboard: {url}")
                yield
                return
            hook = await client.webhooks.register(url)
            try:
                yield
            finally:
                await client.webhooks.delete(hook.id)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/separate", separate)
    return app


async def separate(request: web.Request) -> web.Response:
    """Upload the posted file, run vocals + instrumental, answer once the deliveries say done."""
    client, receiver = request.app[CLIENT], request.app[RECEIVER]
    reader = await request.multipart()
    part = await reader.next()
    if not isinstance(part, aiohttp.BodyPartReader) or part.name != "file" or not part.filename:
        raise web.HTTPBadRequest(text="post the audio as multipart field 'file'")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(part.filename))
        async with aiofiles.open(path, "wb") as handle:
            while chunk := await part.read_chunk():
                await handle.write(chunk)
        try:
            asset = await client.assets.upload(path)
            task = await client.tasks.create(
                asset_id=asset.id,
                targets=[Target("vocals", ["wav"]), Target("instrumental", ["wav"])],
            )
            task = await client.tasks.wait(
                task.id, timeout=600, webhooks=receiver, safety_poll=request.app[SAFETY_POLL]
            )
        except AudioShakeError as exc:
            return web.json_response({"error": str(exc)}, status=502)
    return web.json_response(
        {
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
    )


async def _serve(host: str, port: int) -> None:
    public_url = os.environ.get("PUBLIC_URL", f"http://{host}:{port}")
    async with contextlib.AsyncExitStack() as stack:
        key = base = None
        if not os.environ.get("AUDIOSHAKE_API_KEY"):
            from audioshake_async.emulator import Emulator

            emulator = await stack.enter_async_context(Emulator(delay=1.0))
            key, base = emulator.api_key, emulator.base_url
            print(f"(no AUDIOSHAKE_API_KEY: using the local emulator at {base})")
        register = os.environ.get("WEBHOOK_NO_REGISTER") != "1"
        runner = web.AppRunner(make_app(public_url, key, base, register=register))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, host, port).start()
        print(f"serving on http://{host}:{port}; POST a file to /separate")
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
