"""An emulator on a thread of its own, for blocking code and tests without an event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from anyio.from_thread import start_blocking_portal

from ._emulator import Emulator

__all__ = ["emulator_thread"]


@contextlib.contextmanager
def emulator_thread(**options: Any) -> Iterator[Emulator]:
    """A started :class:`Emulator` whose event loop runs on a thread of its own.

    For synchronous code: a test that calls the blocking ``ImagesClient``, or a
    script. The emulator's test helpers (``journal``, ``requests()``,
    ``add_fault()``, ``reset()``) may be called from the calling thread.
    ``options`` are :class:`Emulator`'s arguments.

    Raises:
        OSError: the port cannot be bound.
    """
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        Emulator(**options)
    ) as emu:
        yield emu
