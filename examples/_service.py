"""Shared by the examples: the real API when AUDIOSHAKE_API_KEY is set, else the local emulator."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def service() -> AsyncIterator[tuple[str | None, str | None]]:
    """Yield (base_url, api_key): None/None means "use the environment" (the real API)."""
    if os.environ.get("AUDIOSHAKE_API_KEY"):
        yield None, None
        return
    from audioshake_async.emulator import Emulator

    async with Emulator(delay=0.2) as emulator:
        print(f"(no AUDIOSHAKE_API_KEY: using the local emulator at {emulator.base_url})")
        yield emulator.base_url, emulator.api_key
