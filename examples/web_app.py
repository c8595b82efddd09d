"""Await a task inside an aiohttp web handler with one shared client.

    python examples/web_app.py            # serves on http://127.0.0.1:8080
    curl -F file=@audio/pop_center.wav http://127.0.0.1:8080/separate

Without ``AUDIOSHAKE_API_KEY`` it runs against the local emulator. The client (one connection
pool, one rate limiter) is created when the app starts and closed when it stops; handlers never
block the loop. The uploaded file's name is the client's to choose, so only its last component
is kept (``../../etc/x.wav`` is written as ``x.wav`` inside a fresh temporary directory), and a
file the API would refuse (``ValidationError``, found before any request) is answered 400.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import AsyncIterator

import anyio
from aiohttp import web

from audioshake_async import AudioShake, AudioShakeError, Target, ValidationError

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


def safe_name(filename: str | None) -> str | None:
    """The last component of a client-sent file name, or None when nothing usable is left.

    Both separators count (a Windows client sends ``..\\x.wav``); ``.``, ``..``, hidden names
    and control characters are refused, so the result can never leave the directory it is
    joined to.
    """
    if not filename:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name.startswith(".") or any(ord(c) < 32 or c == "\x7f" for c in name):
        return None
    return name


async def separate(request: web.Request) -> web.Response:
    """Upload the posted file, run vocals + instrumental, answer with the output links."""
    client = request.app[CLIENT]
    reader = await request.multipart()
    part = await reader.next()
    if part is None or getattr(part, "name", None) != "file" or not getattr(part, "filename", None):
        raise web.HTTPBadRequest(text="post the audio as multipart field 'file'")
    name = safe_name(part.filename)
    if name is None:
        raise web.HTTPBadRequest(text="the uploaded file needs a plain file name")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / name
        async with await anyio.open_file(path, "wb") as handle:  # file I/O off the event loop
            while chunk := await part.read_chunk():  # type: ignore[union-attr]
                await handle.write(chunk)
        try:
            asset = await client.assets.upload(path)
            task = await client.tasks.create(
                asset_id=asset.id,
                targets=[Target("vocals", ["wav"]), Target("instrumental", ["wav"])],
            )
            task = await client.tasks.wait(task.id, timeout=600)
        except ValidationError as exc:  # the caller's file: their mistake, said before a request
            return web.json_response({"error": str(exc)}, status=400)
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
async def emulated_app() -> AsyncIterator[web.Application]:
    """The app on the local emulator (used when ``AUDIOSHAKE_API_KEY`` is not set)."""
    from audioshake_async.emulator import Emulator

    async with Emulator(delay=0.2) as emulator:
        yield make_app(emulator.api_key, emulator.base_url)


async def serve(port: int = 8080) -> None:
    """Serve until interrupted, on the real API or the emulator."""
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("AUDIOSHAKE_API_KEY"):
            app, where = make_app(), "AudioShake"
        else:
            app, where = await stack.enter_async_context(emulated_app()), "emulated AudioShake"
        runner = web.AppRunner(app)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"serving on http://127.0.0.1:{port} ({where})")
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(serve)
