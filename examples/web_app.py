"""Await a task inside an aiohttp web handler with one shared client.

    python examples/web_app.py            # serves on http://127.0.0.1:8080
    curl -F file=@examples/audio/<file>.wav http://127.0.0.1:8080/separate

The client (one connection pool, one rate limiter) is created when the app starts and closed
when it stops; handlers never block the loop: upload, create, wait and the answer are awaited.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator

import aiofiles
from aiohttp import web

from audioshake_async import AudioShake, AudioShakeError, Target

CLIENT = web.AppKey("client", AudioShake)


def make_app(api_key: str | None = None, base_url: str | None = None) -> web.Application:
    """The web app; ``api_key``/``base_url`` default to the environment."""
    app = web.Application(client_max_size=2 * 1024**3)

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        async with AudioShake(api_key, base_url) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/separate", separate)
    return app


async def separate(request: web.Request) -> web.Response:
    """Upload the posted file, run vocals + instrumental, answer with the output links."""
    client = request.app[CLIENT]
    reader = await request.multipart()
    part = await reader.next()
    if part is None or getattr(part, "name", None) != "file" or not getattr(part, "filename", None):
        raise web.HTTPBadRequest(text="post the audio as multipart field 'file'")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{part.filename}"
        async with aiofiles.open(path, "wb") as handle:  # file I/O off the event loop
            while chunk := await part.read_chunk():  # type: ignore[union-attr]
                await handle.write(chunk)
        try:
            asset = await client.assets.upload(path)
            task = await client.tasks.create(
                asset_id=asset.id,
                targets=[Target("vocals", ["wav"]), Target("instrumental", ["wav"])],
            )
            task = await client.tasks.wait(task.id, timeout=600)
        except AudioShakeError as exc:
            return web.json_response({"error": str(exc)}, status=502)
    return web.json_response(
        {
            "task": task.id,
            "targets": [
                {
                    "model": t.model,
                    "status": t.status,
                    "outputs": [
                        {"name": o.name, "format": o.format, "link": o.link} for o in t.output
                    ],
                }
                for t in task.targets
            ],
        }
    )


@contextlib.asynccontextmanager
async def _emulated_app() -> AsyncIterator[web.Application]:
    from audioshake_async.emulator import Emulator

    async with Emulator(delay=0.2) as emulator:
        yield make_app(emulator.api_key, emulator.base_url)


if __name__ == "__main__":
    if "--emulator" in sys.argv:
        import asyncio

        async def serve() -> None:
            async with _emulated_app() as app:
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", 8080).start()
                print("serving on http://127.0.0.1:8080 (emulated AudioShake)")
                await asyncio.Event().wait()

        asyncio.run(serve())
    else:
        web.run_app(make_app(), host="127.0.0.1", port=8080)
