"""BackgroundTasks, the owner of the shared limiter's background tasks: one job per
role, failures handed over (never "Task exception was never retrieved"), everything
cancelled and awaited by aclose() or by the end of the loop."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from typing import Any

import anyio
import pytest

from asyncimg._background import BackgroundTasks, first_error


async def settle(rounds: int = 20) -> None:
    """Let every task that can run, run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Owner:
    """A BackgroundTasks with its callbacks recorded."""

    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.loop_ends = 0
        self.tasks = BackgroundTasks("test", on_failure=self.failures.append,
                                     on_loop_end=self.loop_end)

    async def loop_end(self) -> None:
        await asyncio.sleep(0)  # it may await
        self.loop_ends += 1


def recording_tasks() -> tuple[list[asyncio.Task[Any]], Any]:
    """A task factory that keeps every task it makes."""
    made: list[asyncio.Task[Any]] = []

    def record(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(asyncio.Task(coro, loop=loop, **kwargs))
        return made[-1]

    return made, record


async def test_a_role_runs_once_at_a_time_and_ends_when_its_job_returns() -> None:
    owner = Owner()
    release = asyncio.Event()
    runs: list[str] = []

    async def job() -> None:
        runs.append("a")
        await release.wait()

    assert owner.tasks.start("a", job)
    assert owner.tasks.start("a", job)  # already running: not a second one
    await settle()
    assert runs == ["a"]
    assert owner.tasks.running("a")
    release.set()
    await settle()
    assert not owner.tasks.running("a")
    assert owner.tasks.start("a", job)  # a new one
    await settle()
    assert runs == ["a", "a"]
    await owner.tasks.aclose()


async def test_a_failure_stops_the_others_and_is_handed_over_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = Owner()
    stopped: list[str] = []
    late: list[str] = []

    async def bad() -> None:
        await asyncio.sleep(0)
        raise ValueError("a bug")

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append("slow")
            owner.tasks.start("late", later)  # while the group winds down: the next one runs it

    async def later() -> None:
        late.append("late")

    owner.tasks.start("slow", slow)
    owner.tasks.start("bad", bad)
    with caplog.at_level(logging.ERROR):
        await settle()
        assert stopped == ["slow"]
        (failure,) = owner.failures
        assert isinstance(first_error(failure), ValueError)
        assert late == ["late"]
        assert not owner.tasks.running("bad")
        assert not owner.tasks.running("slow")
        assert owner.tasks.start("bad", later)  # the role can run again
        await settle()
        assert late == ["late", "late"]
        await owner.tasks.aclose()
        gc.collect()
    assert caplog.records == []  # no "Task exception was never retrieved"


async def test_aclose_cancels_and_awaits_every_job_then_starts_nothing() -> None:
    owner = Owner()
    before = asyncio.all_tasks()
    stopped: list[str] = []

    async def forever(role: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(role)

    for role in ("a", "b"):
        owner.tasks.start(role, functools.partial(forever, role))
    await settle()
    await owner.tasks.aclose()
    assert sorted(stopped) == ["a", "b"]
    assert asyncio.all_tasks() == before
    assert not owner.tasks.start("a", functools.partial(forever, "c"))
    assert not owner.tasks.running("a")
    assert owner.loop_ends == 0


async def test_aclose_before_the_host_ran() -> None:
    owner = Owner()
    before = asyncio.all_tasks()

    async def never() -> None:
        raise AssertionError("never started")

    owner.tasks.start("a", never)
    await owner.tasks.aclose()
    assert asyncio.all_tasks() == before
    assert not owner.tasks.running("a")


def test_the_end_of_a_loop_stops_every_job_and_the_next_loop_starts_afresh() -> None:
    owner = Owner()
    made, record = recording_tasks()
    refused: list[bool] = []
    users: list[asyncio.Future[None]] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            refused.append(owner.tasks.start("late", forever))  # the loop is ending

    async def user() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for _ in range(100):  # until the host has ended
                if owner.loop_ends:
                    break
                await asyncio.sleep(0)
            await settle(2)
            refused.append(owner.tasks.start("later", forever))

    async def first() -> None:
        asyncio.get_running_loop().set_task_factory(record)
        owner.tasks.start("a", forever)
        users.append(asyncio.ensure_future(user()))
        await settle()
        # no aclose()

    asyncio.run(first())
    assert owner.loop_ends == 1
    assert len(made) >= 3
    assert [task for task in made if not task.done()] == []
    assert not owner.tasks.running("a")
    assert refused[-1] is False  # after the host had ended: refused

    async def second() -> bool:
        ran = asyncio.Event()

        async def job() -> None:
            ran.set()

        owner.tasks.start("a", job)
        await asyncio.wait_for(ran.wait(), 1.0)
        await owner.tasks.aclose()
        return True

    assert asyncio.run(second())


def test_a_job_spawned_in_the_loops_last_round_is_closed_not_left_unawaited() -> None:
    owner = Owner()

    async def job() -> None:
        raise AssertionError("never started")

    async def first() -> None:
        owner.tasks.start("a", job)  # the host spawns it as the loop stops

    asyncio.run(first())
    gc.collect()  # "coroutine ... was never awaited" would be an error here
    assert not owner.tasks.running("a")
    assert owner.loop_ends == 1

    async def second() -> None:
        done = asyncio.Event()

        async def job() -> None:
            done.set()

        assert owner.tasks.start("a", job)
        await asyncio.wait_for(done.wait(), 1.0)
        await owner.tasks.aclose()

    asyncio.run(second())


async def test_first_error_unwraps_nested_groups() -> None:
    inner = ValueError("x")

    async def fail() -> None:
        raise inner

    async def nested() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(fail)

    caught: Exception | None = None
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(nested)
    except Exception as exc:  # a group holding a group holding ``inner``
        caught = exc
    assert caught is not None
    assert first_error(caught) is inner
    assert first_error(inner) is inner
