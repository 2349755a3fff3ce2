"""Shared fixtures: the emulator, a client pointed at it, and the key-leak watch.

Every log record of the ``asyncimg`` logger, at DEBUG, across the whole run is
kept; at the end of the session none may contain the API key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

TEST_KEY = "sk-test-0123456789-SECRET-never-print-me"


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        if record.exc_info and record.exc_info[1] is not None:
            self.lines.append(repr(record.exc_info[1].args))


_KEPT = _Keep()


@pytest.fixture(scope="session", autouse=True)
def _watch_logs_for_the_key() -> Iterator[_Keep]:
    logger = logging.getLogger("asyncimg")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_KEPT)
    try:
        yield _KEPT
    finally:
        logger.removeHandler(_KEPT)
        logger.setLevel(old_level)
    leaked = [line for line in _KEPT.lines if TEST_KEY in line or TEST_KEY[-12:] in line]
    assert not leaked, f"the API key appeared in {len(leaked)} log records"


@pytest.fixture
def log_lines() -> list[str]:
    """The asyncimg log lines recorded so far in the session (a live list)."""
    return _KEPT.lines


@pytest.fixture
async def emu() -> AsyncIterator[object]:
    """A started emulator expecting ``TEST_KEY``."""
    from asyncimg.testing import Emulator

    async with Emulator(api_key=TEST_KEY) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: object) -> AsyncIterator[object]:
    """An AsyncImagesClient on the emulator, limiter off, fast retries."""
    from asyncimg import AsyncImagesClient
    from asyncimg._retry import RetryPolicy

    async with AsyncImagesClient(
        api_key=TEST_KEY,
        base_url=emu.base_url,  # type: ignore[attr-defined]
        rate_limit=None,
        max_retries=2,
    ) as c:
        c.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.004)
        yield c


# pytester: the pytest plugin is tested the way a user's suite uses it.
pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that drives a real browser is slow: `make test-fast` leaves it out."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
