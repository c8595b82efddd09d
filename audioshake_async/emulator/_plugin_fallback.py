"""Stand-in fixtures used when pytest-asyncio is not active: they explain what to install."""

from __future__ import annotations

from typing import NoReturn

import pytest

MESSAGE = (
    "The {name} fixture is async and needs the pytest-asyncio plugin, which is not active. "
    "Install it (pip install pytest-asyncio) and set asyncio_mode = 'auto' in your pytest "
    "configuration, or mark the test with @pytest.mark.asyncio."
)


@pytest.fixture
def audioshake_emulator() -> NoReturn:
    """Fails with instructions (pytest-asyncio missing)."""
    pytest.fail(MESSAGE.format(name="audioshake_emulator"), pytrace=False)


@pytest.fixture
def audioshake_emulator_factory() -> NoReturn:
    """Fails with instructions (pytest-asyncio missing)."""
    pytest.fail(MESSAGE.format(name="audioshake_emulator_factory"), pytrace=False)
