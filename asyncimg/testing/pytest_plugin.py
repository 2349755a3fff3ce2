"""pytest fixtures for code that talks to the Images API: a started emulator.

Enable with ``pytest_plugins = ["asyncimg.testing.pytest_plugin"]`` (the async
fixture needs pytest-asyncio). Two fixtures, both an :class:`Emulator` that
expects the key :data:`EMULATOR_API_KEY`; point a client at it with
``api_key=emulator.api_key, base_url=emulator.base_url``:

* ``emulator``: for ``async def`` tests; it runs on the test's own event loop.
* ``emulator_sync``: for plain ``def`` tests (the blocking ``ImagesClient``):
  it runs on a thread of its own, so a blocking call cannot freeze it.

Override ``emulator_options`` to configure them::

    @pytest.fixture
    def emulator_options():
        return {"images_per_minute": (20, 2.0), "latency": 0.01}
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from ._emulator import Emulator
from ._thread import emulator_thread

__all__ = ["EMULATOR_API_KEY", "emulator", "emulator_options", "emulator_sync"]

EMULATOR_API_KEY = "sk-test-emulator-key"
"""The key the fixtures' emulators expect (also their ``api_key`` attribute)."""


@pytest.fixture
def emulator_options() -> dict[str, Any]:
    """Extra :class:`Emulator` arguments for the fixtures (none by default)."""
    return {}


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    try:
        extra: dict[str, Any] = request.getfixturevalue("emulator_options")
    except pytest.FixtureLookupError:
        extra = {}
    return {"api_key": EMULATOR_API_KEY, **extra}


@pytest_asyncio.fixture
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    """A started :class:`Emulator` on the test's loop, expecting :data:`EMULATOR_API_KEY`.

    Takes extra arguments from an ``emulator_options`` fixture when there is one
    (so importing just this fixture into a test module works too). A plain
    ``def`` test gets an error at once instead of a hang (nothing runs the loop
    while it blocks): it wants ``emulator_sync``.
    """
    test = getattr(request.node, "obj", None)
    if callable(test) and not inspect.iscoroutinefunction(test):
        pytest.fail(
            "the `emulator` fixture runs on the test's event loop, which a plain `def` "
            "test never runs, so a blocking call to it would hang: use `emulator_sync`",
            pytrace=False,
        )
    async with Emulator(**_options(request)) as emu:
        yield emu


@pytest.fixture
def emulator_sync(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """A started :class:`Emulator` on a thread of its own, for tests that block.

    Like ``emulator`` otherwise (the same key, the same ``emulator_options``).
    """
    with emulator_thread(**_options(request)) as emu:
        yield emu
