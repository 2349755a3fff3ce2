"""asyncimg.testing: a local emulator of the OpenAI Images API, for tests and demos.

::

    from asyncimg.testing import Emulator, Fault

    async with Emulator(api_key="sk-test") as emu:
        emu.add_fault(Fault.status(503))
        ...  # point a client at emu.base_url
        assert len(emu.requests("generate")) == 2

Importing this package imports aiohttp.web; ``import asyncimg`` alone does not.
For blocking code, ``with emulator_thread() as emu:`` runs one on a thread of
its own. Run one as a process with ``python -m asyncimg.testing --port 8089``
(the same as ``asyncimg serve``); pytest users get the ``emulator`` fixture
(async tests) and the ``emulator_sync`` fixture (plain tests) with
``pytest_plugins = ["asyncimg.testing.pytest_plugin"]``. With Pillow
installed (``asyncimg[images]``) its JPEG and WebP results are real and its
edits honour the mask (see ``asyncimg.testing._pictures``); Pillow is imported
only then. :class:`FakeClock` is the limiter's clock for tests
(``Limiter(rate, clock=FakeClock())``): time moves only when the test says so.
"""

from .._clock import FakeClock
from ._batches import BatchAPI, BatchPace
from ._emulator import (
    CONTENT_POLICY_MARKER,
    Emulator,
    Journal,
    JournalEntry,
    UploadedFile,
    format_duration,
    mask_key,
    serve,
)
from ._faults import Fault, FaultKind
from ._png import encode_png, make_png
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
