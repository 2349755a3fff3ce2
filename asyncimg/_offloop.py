"""Work too large for the event loop runs here: one worker thread for the process.

Decoding a large JSON body or base64 text, or checking a large upload, takes
milliseconds to a hundred of them; on the loop, every other task would wait that
long. One thread, not a pool: the work holds the GIL, so a second thread would
not make it faster, only make the loop wait behind more GIL holders.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, ParamSpec, TypeVar

__all__ = ["OFF_LOOP_BYTES", "off_loop"]

OFF_LOOP_BYTES: Final = 4 * 1024 * 1024
"""Bodies, base64 texts and uploads larger than this are handled off the loop."""

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncimg-decode")
        return _executor


async def off_loop(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the worker thread; the loop runs on meanwhile.

    Raises:
        BaseException: whatever ``fn`` raised.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_worker(), functools.partial(fn, *args, **kwargs))
