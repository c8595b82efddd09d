"""pytest plugin (entry point ``audioshake_emulator``) providing emulator fixtures.

Fixtures (async, function scope):

``audioshake_emulator``
    A running :class:`~audioshake_async.emulator.Emulator` with ``delay=0``. Knobs can be
    set per test with ``@pytest.mark.audioshake_emulator(fail_rate=0.5, seed=1)``.
``audioshake_emulator_factory``
    ``await factory(**knobs)`` starts another emulator; all are closed at teardown.

The fixtures are coroutines, so they need an async test plugin: pytest-asyncio (auto mode, or
its default strict mode with ``@pytest.mark.asyncio`` tests) or, when pytest-asyncio is not
active, anyio's own plugin (tests marked ``@pytest.mark.anyio``, asyncio backend). This module
imports cleanly without either: the fixtures are registered at configure time for the plugin
that is active, otherwise as fixtures that fail with an explanation.
"""

from __future__ import annotations

import pytest

MARKER = "audioshake_emulator"
_ASYNCIO_PLUGIN_NAMES = ("asyncio", "pytest_asyncio", "pytest_asyncio.plugin")
_ANYIO_PLUGIN_NAMES = ("anyio", "anyio.pytest_plugin")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and the fixtures that fit the installed async plugin."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**knobs): EmulatorConfig knobs for the audioshake_emulator fixture",
    )
    manager = config.pluginmanager
    if any(manager.has_plugin(name) for name in _ASYNCIO_PLUGIN_NAMES):
        from . import _plugin_asyncio as fixtures
    elif any(manager.has_plugin(name) for name in _ANYIO_PLUGIN_NAMES):
        from . import _plugin_anyio as fixtures  # type: ignore[no-redef]
    else:
        from . import _plugin_fallback as fixtures  # type: ignore[no-redef]
    if not manager.is_registered(fixtures):
        manager.register(fixtures, "audioshake_emulator_fixtures")
