"""asyncimg.testing: a local emulator of the OpenAI Images API, for tests and demos.

::

    from asyncimg.testing import Emulator, Fault

    async with Emulator(api_key="sk-test") as emu:
        emu.add_fault(Fault.status(503))
        ...  # point a client at emu.base_url
        assert len(emu.requests("generate")) == 2

For blocking code, ``with emulator_thread() as emu:`` runs one on a thread of
its own. Run one as a process with ``python -m asyncimg.testing --port 8089``
(the same as ``asyncimg serve``); pytest users get the ``emulator`` fixture
(async tests) and the ``emulator_sync`` fixture (plain tests) with
``pytest_plugins = ["asyncimg.testing.pytest_plugin"]``. With Pillow
installed (``asyncimg[images]``) its JPEG and WebP results are real and its
edits honour the mask (see ``asyncimg.testing._pictures``); Pillow is imported
only then. :class:`FakeClock` is the limiter's clock for tests
(``Limiter(rate, clock=FakeClock())``): time moves only when the test says so.

Each name is imported from its module when first used: ``Emulator`` imports
aiohttp.web, ``import asyncimg.testing`` alone does not (so ``asyncimg --help``
stays quick), and ``import asyncimg`` does not import this package at all. The
emulator's parts each have a module of their own, listed in the docstring of
``asyncimg.testing._emulator``.
"""

from __future__ import annotations

import typing as _typing

from .._lazy import lazy_names

if _typing.TYPE_CHECKING:
    from .._clock import FakeClock
    from ._batches import BatchAPI, BatchPace
    from ._emulator import Emulator
    from ._faults import Fault, FaultKind
    from ._images import CONTENT_POLICY_MARKER
    from ._journal import Journal, JournalEntry, UploadedFile
    from ._keys import mask_key
    from ._png import encode_png, make_png
    from ._ratelimit import format_duration
    from ._serve import serve
    from ._thread import emulator_thread

__all__ = [
    "CONTENT_POLICY_MARKER",
    "BatchAPI",
    "BatchPace",
    "Emulator",
    "FakeClock",
    "Fault",
    "FaultKind",
    "Journal",
    "JournalEntry",
    "UploadedFile",
    "emulator_thread",
    "encode_png",
    "format_duration",
    "make_png",
    "mask_key",
    "serve",
]

_HOMES = {
    "FakeClock": "asyncimg._clock",
    "BatchAPI": "._batches",
    "BatchPace": "._batches",
    "CONTENT_POLICY_MARKER": "._images",
    "Emulator": "._emulator",
    "Fault": "._faults",
    "FaultKind": "._faults",
    "Journal": "._journal",
    "JournalEntry": "._journal",
    "UploadedFile": "._journal",
    "emulator_thread": "._thread",
    "encode_png": "._png",
    "format_duration": "._ratelimit",
    "make_png": "._png",
    "mask_key": "._keys",
    "serve": "._serve",
}


__getattr__ = lazy_names(__name__, globals(), _HOMES)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
