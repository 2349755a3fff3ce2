"""pytest fixtures for code that talks to the Images API: a started emulator.

Enable with ``pytest_plugins = ["asyncimg.testing.pytest_plugin"]`` (needs
pytest-asyncio). Override ``emulator_options`` to configure it::

    @pytest.fixture
    def emulator_options():
        return {"images_per_minute": (20, 2.0), "latency": 0.01}
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ._emulator import Emulator

__all__ = ["EMULATOR_API_KEY", "emulator", "emulator_options"]

EMULATOR_API_KEY = "sk-test-emulator-key"
"""The key the ``emulator`` fixture expects."""


@pytest.fixture
def emulator_options() -> dict[str, Any]:
    """Extra :class:`Emulator` arguments for the ``emulator`` fixture (none by default)."""
    return {}


@pytest_asyncio.fixture
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """A started :class:`Emulator` expecting :data:`EMULATOR_API_KEY`; closed afterwards.

    Takes extra arguments from an ``emulator_options`` fixture when there is one
    (so importing just this fixture into a test module works too).
    """
    try:
        extra: dict[str, Any] = request.getfixturevalue("emulator_options")
    except pytest.FixtureLookupError:
        extra = {}
    options = {"api_key": EMULATOR_API_KEY, **extra}
    async with Emulator(**options) as emu:
        yield emu
