"""The fault matrix: every failure ends in a success after the right number of
attempts, or in the right exception; nothing is left open, pending or held.

Each cell scripts one fault in the emulator, either once (the retry succeeds)
or on every attempt (the error surfaces), and runs it through each way of
calling: generate, edit, create_variation and generate_many.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

from asyncimg import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncImagesClient,
    BadRequestError,
    ImagesResponse,
    InternalServerError,
    RateLimit,
    RateLimitError,
    ResponseTooLargeError,
)
from asyncimg._retry import RetryPolicy
from asyncimg.testing import Emulator, Fault, make_png

from .conftest import TEST_KEY

TIMEOUT = 0.1
IMAGE = make_png(256, 256, "fault-matrix", alpha=True)


@attrs.frozen
class Cell:
    """One fault, and what it must end in when it happens once and always."""

    name: str
    fault: Callable[[int], Fault]
    once_attempts: int
    always: type[Exception]
    always_attempts: int
    status: int | None = None
    code: str | None = None
    min_gap: float = 0.0
    """The least time between the attempts (a server wait honoured, not backoff's)."""


FAULTS = [
    Cell("429 retry-after", lambda t: Fault.status(429, retry_after=0.05, times=t), 2,
         RateLimitError, 3, 429, "rate_limit_exceeded", min_gap=0.045),
    Cell("429 retry-after over the cap", lambda t: Fault.status(429, retry_after=300, times=t),
         1, RateLimitError, 1, 429, "rate_limit_exceeded"),
    Cell("500 x-should-retry false", lambda t: Fault.status(500, should_retry=False, times=t),
         1, InternalServerError, 1, 500),
    Cell("400 x-should-retry true", lambda t: Fault.status(400, should_retry=True, times=t),
         2, BadRequestError, 3, 400),
    Cell("501", lambda t: Fault.status(501, times=t), 2, InternalServerError, 3, 501),
    Cell("520", lambda t: Fault.status(520, times=t), 2, InternalServerError, 3, 520),
    Cell("529", lambda t: Fault.status(529, times=t), 2, InternalServerError, 3, 529),
    Cell("429 insufficient_quota", lambda t: Fault.status(429, code="insufficient_quota",
                                                           times=t), 1,
         RateLimitError, 1, 429, "insufficient_quota"),
    Cell("500", lambda t: Fault.status(500, times=t), 2, InternalServerError, 3, 500),
    Cell("502 html", lambda t: Fault.html(502, times=t), 2, InternalServerError, 3, 502),
    Cell("503", lambda t: Fault.status(503, times=t), 2, InternalServerError, 3, 503),
    Cell("dropped before reply", lambda t: Fault.drop(times=t), 2, APIConnectionError, 3),
    Cell("dropped mid-body", lambda t: Fault.drop_mid_body(times=t), 2, APIConnectionError, 3),
    # A complete 200 that does not parse was made and billed: never sent again.
    Cell("truncated json", lambda t: Fault.truncated(times=t), 1,
         APIResponseValidationError, 1),
    Cell("slower than the timeout", lambda t: Fault.delay(TIMEOUT * 3, times=t), 2,
         APITimeoutError, 3),
    Cell("trickling body", lambda t: Fault.trickle(TIMEOUT / 2, 6, times=t), 2,
         APITimeoutError, 3),
]

CALLERS = ["generate", "edit", "create_variation", "generate_many"]
PATHS = {
    "generate": "/v1/images/generations",
    "edit": "/v1/images/edits",
    "create_variation": "/v1/images/variations",
    "generate_many": "/v1/images/generations",
}


async def call(client: AsyncImagesClient, caller: str) -> ImagesResponse:
    """Run one call of the given kind; a batch item's error is raised."""
    if caller == "generate":
        return await client.generate("a cat", model="dall-e-2", size="256x256")
    if caller == "edit":
        return await client.edit(IMAGE, "a hat", model="dall-e-2", size="256x256")
    if caller == "create_variation":
        return await client.create_variation(IMAGE, model="dall-e-2", size="256x256")
    items = [item async for item in client.generate_many(["a cat"], model="dall-e-2",
                                                         size="256x256")]
    (item,) = items
    if item.error is not None:
        raise item.error
    assert item.response is not None
    return item.response


def client_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still pending that run asyncimg's client code (not the emulator's)."""
    pending = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = getattr(code, "co_filename", "")
        if "asyncimg" in filename and "testing" not in filename:
            pending.append(task)
    return pending


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator that writes headers as other servers do: capitalised, Retry-After alone."""
    async with Emulator(api_key=TEST_KEY, header_style="canonical") as emulator:
        yield emulator


@pytest.fixture
async def fclient(emu: Emulator) -> AsyncIterator[AsyncImagesClient]:
    async with AsyncImagesClient(
        api_key=TEST_KEY,
        base_url=emu.base_url,
        rate_limit=RateLimit(images=1000, per=60.0),
        max_retries=2,
        timeout=TIMEOUT,
    ) as client:
        client.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.002)
        yield client
        await asyncio.sleep(0)
        assert client_tasks() == []
        session = client._transport._session
        assert session is not None
        assert not session.connector._acquired  # type: ignore[union-attr]
        stats = client.limiter.stats()
        assert stats.held == 0
        assert stats.waiting == 0
        # Every permit sent is in the window but those a 429 refused (one image each).
        assert stats.sent == stats.in_window + len(emu.requests(status=429))


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("cell", FAULTS, ids=lambda c: c.name)
async def test_fault_once(fclient: AsyncImagesClient, emu: Emulator, cell: Cell,
                          caller: str) -> None:
    emu.add_fault(cell.fault(1))
    if cell.once_attempts == 1:
        with pytest.raises(cell.always) as info:
            await call(fclient, caller)
        check_error(info.value, cell)
    else:
        response = await call(fclient, caller)
        assert len(response.data) == 1
        assert response.request_id
    requests = emu.requests(PATHS[caller])
    assert len(requests) == cell.once_attempts
    assert fclient.limiter.stats().sent == cell.once_attempts
    if cell.min_gap:
        assert requests[1].time - requests[0].time >= cell.min_gap


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("cell", FAULTS, ids=lambda c: c.name)
async def test_fault_always(fclient: AsyncImagesClient, emu: Emulator, cell: Cell,
                            caller: str) -> None:
    emu.add_fault(cell.fault(99))
    with pytest.raises(cell.always) as info:
        await call(fclient, caller)
    check_error(info.value, cell)
    await journaled(emu, PATHS[caller], cell.always_attempts)
    assert len(emu.requests(PATHS[caller])) == cell.always_attempts
    assert fclient.limiter.stats().sent == cell.always_attempts


async def journaled(emu: Emulator, path: str, count: int) -> None:
    """Wait (a fraction of a second at most) for requests the server is still answering.

    The journal records a request when its answer ends; a reply slower than the
    client's timeout ends after the client gave up on it.
    """
    for _ in range(100):
        if len(emu.requests(path)) >= count:
            return
        await asyncio.sleep(0.01)


def check_error(error: BaseException, cell: Cell) -> None:
    if cell.status is not None:
        assert isinstance(error, APIStatusError)
        assert error.status_code == cell.status
        assert error.request_id
        assert error.request_id.startswith("req_")
        if cell.code is not None:
            assert error.code == cell.code
    if isinstance(error, APIResponseValidationError):
        assert error.request_id
    assert error.__cause__ is None or not isinstance(error.__cause__, APIStatusError)
    assert TEST_KEY not in repr(error.args)


async def test_a_429_pauses_the_limiter_once_for_everyone(emu: Emulator) -> None:
    emu.add_fault(Fault.status(429, retry_after=0.05, times=3))
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=100, per=60.0)) as client:
        client.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.002)
        results = await asyncio.gather(*[call(client, "generate") for _ in range(3)])
        assert all(r.data for r in results)
        assert client.limiter.stats().pauses == 1
    first_retry = min(e.time for e in emu.journal if e.status == 200)
    last_429 = max(e.time for e in emu.journal if e.status == 429)
    assert first_retry - last_429 >= 0.04


async def test_a_wait_over_the_cap_raises_instead_of_sleeping(emu: Emulator) -> None:
    emu.add_fault(Fault.status(503, retry_after=3600))
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=None) as client:
        with pytest.raises(InternalServerError):
            await call(client, "generate")
    assert len(emu.journal) == 1


async def test_x_should_retry_false_is_obeyed(client: AsyncImagesClient, emu: Emulator) -> None:
    emu.add_fault(Fault.status(500, should_retry=False))
    with pytest.raises(InternalServerError):
        await call(client, "generate")
    assert len(emu.journal) == 1


async def test_per_call_max_retries(client: AsyncImagesClient, emu: Emulator) -> None:
    emu.add_fault(Fault.status(500, times=99))
    with pytest.raises(InternalServerError):
        await client.generate("p", max_retries=0)
    assert len(emu.journal) == 1
    emu.reset()
    emu.add_fault(Fault.status(500, times=4))
    await client.generate("p", max_retries=4)
    assert len(emu.journal) == 5


async def test_per_call_timeout(client: AsyncImagesClient, emu: Emulator) -> None:
    emu.add_fault(Fault.delay(0.3, times=99))
    with pytest.raises(APITimeoutError) as info:
        await client.generate("p", timeout=0.05, max_retries=0)
    assert isinstance(info.value, TimeoutError)


async def test_a_body_over_the_cap_is_refused(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None,
                                 max_response_bytes=10_000) as client:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes"):
            await client.generate("p", model="dall-e-2", response_format="b64_json")
    assert len(emu.journal) == 1


async def test_connection_refused_is_a_connection_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=f"http://127.0.0.1:{port}/v1",
                                 rate_limit=RateLimit(images=10, per=60.0)) as client:
        client.retry_policy = RetryPolicy(max_retries=1, initial=0.001, maximum=0.001)
        with pytest.raises(APIConnectionError, match="cannot connect") as info:
            await client.generate("p")
        assert type(info.value) is APIConnectionError
        assert client.limiter.stats().held == 0


async def test_cancelled_call_leaves_nothing_held(emu: Emulator) -> None:
    emu.latency = 5.0
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=10, per=60.0)) as client:
        task = asyncio.ensure_future(client.generate("p", model="dall-e-2"))
        while not emu.journal and not task.done():
            await asyncio.sleep(0.01)
            if client.limiter.stats().sent:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = client.limiter.stats()
        assert stats.held == 0
        assert stats.sent == 1  # it was sent: its permit stays spent
        assert client_tasks() == []


async def test_retries_are_logged(client: AsyncImagesClient, emu: Emulator,
                                  caplog: pytest.LogCaptureFixture) -> None:
    emu.add_fault(Fault.status(503))
    with caplog.at_level("DEBUG", logger="asyncimg"):
        await call(client, "generate")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "asyncimg"]
    assert [level for level, _ in messages] == ["DEBUG", "INFO", "DEBUG"]
    assert "POST /images/generations attempt 1: 503" in messages[0][1]
    assert "retrying after attempt 1 (status 503)" in messages[1][1]
    assert "POST /images/generations attempt 2: 200" in messages[2][1]
    assert "req_" in messages[2][1]


async def test_the_key_is_in_no_error_and_no_log(emu: Emulator,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=None) as client:
        client.retry_policy = RetryPolicy(max_retries=1, initial=0.001, maximum=0.001)
        for fault in (Fault.status(401, times=2), Fault.drop(times=2), Fault.html(502, times=2)):
            emu.add_fault(fault)
            with caplog.at_level("DEBUG", logger="asyncimg"):
                try:
                    await call(client, "generate")
                except Exception as exc:
                    errors.append(exc)
        text = repr(client) + repr(client.retry_policy)
    assert len(errors) == 3
    for error in errors:
        for part in (str(error), repr(error), repr(error.args), repr(vars(error))):
            assert TEST_KEY not in part
    assert TEST_KEY not in caplog.text
    assert TEST_KEY not in text


async def test_a_signed_download_url_is_logged_without_its_query(
    client: AsyncImagesClient, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    from asyncimg import Image, NotFoundError

    url = emu.base_url + "/blob.png?sig=SECRET-SIGNATURE&se=2030"
    with caplog.at_level("DEBUG", logger="asyncimg"), pytest.raises(NotFoundError) as info:
        await client.download(Image(url=url))
    assert "GET http://" in caplog.text
    assert "SECRET-SIGNATURE" not in caplog.text
    assert "SECRET-SIGNATURE" not in str(info.value)
