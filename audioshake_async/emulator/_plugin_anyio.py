"""Emulator fixtures for anyio's pytest plugin (registered by :mod:`.plugin` when anyio's plugin
is active and pytest-asyncio is not): plain async fixtures, which anyio runs for tests marked
``@pytest.mark.anyio`` on the asyncio backend (the emulator is built on aiohttp)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from .server import Emulator

#: Defaults of the fixture emulator: instant processing keeps user tests fast.
FIXTURE_DEFAULTS: dict[str, Any] = {"delay": 0.0}


def _marker_knobs(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("audioshake_emulator")
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
async def audioshake_emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """A running emulator (``delay=0`` plus any ``audioshake_emulator`` marker knobs)."""
    async with Emulator(**{**FIXTURE_DEFAULTS, **_marker_knobs(request)}) as emu:
        yield emu


@pytest.fixture
async def audioshake_emulator_factory() -> AsyncIterator[Callable[..., Awaitable[Emulator]]]:
    """``await factory(**knobs)`` starts an emulator; every one is closed at teardown."""
    started: list[Emulator] = []

    async def factory(**knobs: Any) -> Emulator:
        emu = await Emulator(**{**FIXTURE_DEFAULTS, **knobs}).start()
        started.append(emu)
        return emu

    try:
        yield factory
    finally:
        for emu in reversed(started):
            await emu.aclose()
