"""BackgroundTasks: one owner for the tasks an object starts on demand.

The shared Redis limiter works in the background: a submitter sends new tickets, a
settler sends stamps and refunds, a pump and a listener serve the waiters. They start
when needed, from plain methods (a permit's ``stamp()``, ``pause()``) called anywhere on
the loop, and outlive the call that started them. So they cannot live in a task group
entered by the caller, as the rest of the library's tasks do: no caller's ``async with``
spans their life.

Instead this owner hosts an anyio task group in one task of its own, *the host*,
created on first use. The group holds strong references to the tasks, and when one
fails it cancels the others and waits for them; the host then hands the failure to
``on_failure`` (the limiter fails its waiters with ``LimiterUnavailableError``: no
"Task exception was never retrieved") and opens a new group, in which the tasks
start again when next asked for. :meth:`BackgroundTasks.aclose` cancels the group
and waits for the host.

A loop that ends without :meth:`~BackgroundTasks.aclose` cancels every task
(``asyncio.run``, ``asyncio.Runner``, ``anyio.run`` and pytest-asyncio all do), the
host among them: the group waits for its tasks, then the host awaits ``on_loop_end``
(the limiter closes the connections it opened). Nothing starts on that loop after
that, so nothing is left pending; the owner may start again on a later loop. (A job
spawned in the loop's last round is cancelled before anyio's wrapper task awaits its
coroutine; the owner closes such a coroutine, or Python would warn that it was never
awaited.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

# anyio imports its asyncio backend on first use, on the loop: 50 ms, and over 300 ms
# on a loaded machine, which the shared limiter's first Redis call (timeout 2 s, 0.5 s
# in tests) would pay. So it comes with this module.
with contextlib.suppress(ImportError):
    import anyio._backends._asyncio

__all__ = ["BackgroundTasks", "first_error"]

Job = Callable[[], Awaitable[None]]


def first_error(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups; ``exc`` itself otherwise."""
    inner = getattr(exc, "exceptions", None)
    while inner:
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


class BackgroundTasks:
    """Runs named jobs in the background, at most one per name (see the module docstring).

    Args:
        name: the host task's name, and the prefix of its tasks' names.
        on_failure: called (on the loop) with the exception group once a job has
            raised and the others have been cancelled and awaited.
        on_loop_end: awaited by the host when the loop cancels it.
    """

    def __init__(
        self,
        name: str,
        *,
        on_failure: Callable[[Exception], None],
        on_loop_end: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self._on_failure = on_failure
        self._on_loop_end = on_loop_end
        self._running: dict[str, asyncio.Event] = {}  # set when the job has ended
        self._runs: dict[str, Coroutine[Any, Any, None]] = {}  # spawned, maybe not started
        self._queued: dict[str, Job] = {}  # for the next group
        self._group: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._ended: asyncio.AbstractEventLoop | None = None  # a loop that is ending
        self._closed = False

    def running(self, role: str) -> bool:
        """True from :meth:`start` until the job named ``role`` has returned."""
        return role in self._running

    def start(self, role: str, job: Job) -> bool:
        """Run ``job()`` in the background as ``role``, unless a ``role`` runs already.

        Returns True if a job named ``role`` runs (or will, once the host is up);
        False once closed, or while the running loop is ending.

        Raises:
            RuntimeError: no event loop is running.
        """
        if not self.open():
            return False
        if role not in self._running:
            self._running[role] = asyncio.Event()
            group = self._group
            if group is not None and not group.cancel_scope.cancel_called:
                self._spawn(group, role, job)
            else:  # the host is starting, or winding down after a failure
                self._queued[role] = job
        return True

    def open(self) -> bool:
        """Start the host on the running loop if it is not up: from then on, the loop's
        end reaches ``on_loop_end``. Returns False once closed, or while the loop ends.

        Raises:
            RuntimeError: no event loop is running.
        """
        loop = asyncio.get_running_loop()
        if self._closed or loop is self._ended:
            return False
        if self._host is not None and self._host.get_loop() is not loop:
            self._drop_host()  # its loop stopped without cancelling it
        if self._host is None:
            self._host = loop.create_task(self._serve(), name=self.name)
            self._host.add_done_callback(self._host_done)
        return True

    async def wait(self, role: str, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until the job named ``role`` has returned."""
        done = self._running.get(role)
        if done is not None:
            with anyio.move_on_after(timeout):
                await done.wait()

    async def aclose(self) -> None:
        """Cancel every job, wait until all have returned; start nothing from now on."""
        self._closed = True
        host = self._host
        if host is None:
            return
        if self._group is not None:
            self._group.cancel_scope.cancel()
        else:  # created, not yet running
            host.cancel()
        await asyncio.wait([host])

    async def _serve(self) -> None:
        try:
            while not self._closed:
                try:
                    async with anyio.create_task_group() as group:
                        self._group = group
                        queued, self._queued = self._queued, {}
                        for role, job in queued.items():
                            self._spawn(group, role, job)
                        await anyio.sleep_forever()
                except Exception as exc:  # a job failed; the group cancelled and awaited the rest
                    self._group = None
                    self._forget_ended()
                    self._on_failure(exc)
        except asyncio.CancelledError:  # only the loop's end cancels the host itself
            self._ended = asyncio.get_running_loop()
            self._group = None
            await self._on_loop_end()
            raise
        finally:
            self._group = None

    def _spawn(self, group: anyio.abc.TaskGroup, role: str, job: Job) -> None:
        run = self._runs[role] = self._run(role, job, self._running[role])
        group.start_soon(lambda: run, name=f"{self.name}: {role}")

    async def _run(self, role: str, job: Job, done: asyncio.Event) -> None:
        try:
            await job()
        finally:
            if self._running.get(role) is done:  # not forgotten with a stopped loop
                del self._running[role]
                del self._runs[role]
            done.set()

    def _forget_ended(self) -> None:
        """After a group: a job that never got to run (cancelled first) has ended too."""
        for role in [role for role in self._running if role not in self._queued]:
            run = self._runs.pop(role, None)
            if run is not None and inspect.getcoroutinestate(run) == inspect.CORO_CREATED:
                run.close()
            self._running.pop(role).set()

    def _host_done(self, host: asyncio.Task[None]) -> None:
        if host.cancelled():
            self._ended = host.get_loop()
        if self._host is host:
            self._drop_host()

    def _drop_host(self) -> None:
        self._host = None
        self._group = None
        self._queued.clear()
        self._forget_ended()
