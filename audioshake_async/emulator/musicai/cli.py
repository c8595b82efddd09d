"""``python -m audioshake_async.emulator.musicai``: a Music.AI emulator in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from .server import MusicAIEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m audioshake_async.emulator.musicai",
        description="Run a local Music.AI emulator until interrupted; prints its addresses "
        "as one JSON line.",
    )
    parser.add_argument("--api-key", default="musicai-key")
    parser.add_argument("--delay", type=float, default=0.2, help="processing seconds per job")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (prints the CA path)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage-port", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s (429 above)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of jobs FAILED")
    parser.add_argument("--list-order", choices=("oldest", "newest"), default="oldest")
    parser.add_argument("--workdir", default=None, help="parent of the temp directory")
    return parser


async def _serve_forever(args: argparse.Namespace, ready: Callable[[dict[str, Any]], None]) -> None:
    async with MusicAIEmulator(
        api_key=args.api_key,
        delay=args.delay,
        tls=args.tls,
        port=args.port,
        storage_port=args.storage_port,
        rate_limit=args.rate_limit,
        fail_rate=args.fail_rate,
        list_order=args.list_order,
        workdir=args.workdir,
    ) as emulator:
        ca = emulator.ca_path
        ready(
            {
                "base_url": emulator.base_url,
                "storage_url": emulator.storage_url,
                "api_key": emulator.api_key,
                "ca_path": str(ca) if ca is not None else None,
                "pid": os.getpid(),
            }
        )
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground (Ctrl-C or SIGTERM stops it)."""
    import signal

    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def ready(info: dict[str, Any]) -> None:
        print(json.dumps(info), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args, ready))
    return 0
