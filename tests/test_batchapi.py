"""The Batch API route: pure line building and reading, the emulator's Files and Batch APIs,
the library's submit/wait/results, and the official SDK's files and batches against it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp import web

from asyncimg import (
    AsyncImagesClient,
    BadRequestError,
    BatchAPIJob,
    BatchRequestError,
    ContentPolicyError,
    ValidationError,
    submit_batch,
)
from asyncimg._batch.api import (
    BatchAPIResult,
    BatchAPIState,
    batch_api_line,
    create,
    find_batch,
    split_batch_lines,
    upload,
)
from asyncimg._retry import RetryPolicy
from asyncimg.testing import CONTENT_POLICY_MARKER, BatchPace, Emulator, Fault

from .conftest import TEST_KEY

# -- pure ---------------------------------------------------------------------------------


def test_a_line_is_one_post_to_the_endpoint() -> None:
    line = batch_api_line("abc-1", "generate", {"prompt": "a fox", "n": 2})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {
        "custom_id": "abc-1", "method": "POST", "url": "/v1/images/generations",
        "body": {"prompt": "a fox", "n": 2},
    }
    assert json.loads(batch_api_line("e", "edit", {}))["url"] == "/v1/images/edits"


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (("x", "variation", {}), "endpoint"),
        (("", "generate", {}), "custom_id"),
        (("x", "generate", {"seed": float("nan")}), "extra_body"),
        (("x", "generate", {"seed": object()}), "extra_body"),
    ],
)
def test_a_line_that_cannot_be_sent_is_refused(args: tuple[str, str, dict[str, object]],
                                               param: str) -> None:
    with pytest.raises(ValidationError) as caught:
        batch_api_line(*args)
    assert caught.value.param == param


def test_lines_are_split_by_count_and_by_size() -> None:
    lines = [b"x" * 9 + b"\n"] * 25
    assert [len(f) for f in split_batch_lines(lines, max_lines=10)] == [10, 10, 5]
    assert [len(f) for f in split_batch_lines(lines, max_bytes=35)] == [3] * 8 + [1]
    assert split_batch_lines([]) == []
    with pytest.raises(ValidationError):
        split_batch_lines([b"y" * 100], max_bytes=50)


def test_result_lines_become_responses_or_errors() -> None:
    ok = BatchAPIResult.from_line(json.dumps({
        "custom_id": "a", "error": None,
        "response": {"status_code": 200, "request_id": "req_1",
                     "body": {"created": 1, "data": [{"b64_json": "AAAA"}]}},
    }))
    assert ok.ok
    assert ok.response is not None
    assert (ok.response.request_id, ok.response.data[0].b64_json) == ("req_1", "AAAA")

    refused = BatchAPIResult.from_line(json.dumps({
        "custom_id": "b", "error": None,
        "response": {"status_code": 400, "request_id": "req_2", "body": {"error": {
            "message": "no", "type": "image_generation_user_error",
            "code": "content_policy_violation", "param": None}}},
    }))
    assert isinstance(refused.error, ContentPolicyError)
    assert (refused.error.request_id, refused.error.code) == ("req_2", "content_policy_violation")

    expired = BatchAPIResult.from_line(json.dumps({
        "custom_id": "c", "response": None,
        "error": {"code": "batch_expired", "message": "too late"},
    }))
    assert isinstance(expired.error, BatchRequestError)
    assert (expired.error.code, expired.error.message) == ("batch_expired", "too late")


@pytest.mark.parametrize("line", ["not json", "[]", '{"id": 1}', '{"custom_id": 3, "resp',
                                  '{"custom_id": "", "response": {"st'])
def test_a_line_that_names_no_item_is_an_error(line: str) -> None:
    from asyncimg import APIResponseValidationError

    with pytest.raises(APIResponseValidationError):
        BatchAPIResult.from_line(line)


@pytest.mark.parametrize("line", [
    '{"custom_id": "x"}',
    '{"id": "batch_req_1", "custom_id": "x", "response": {"status_code": 200, "body": {"da',
    '{"custom_id":"x","response":null,"error":{"code":"batch_expired"',
])
def test_a_malformed_line_that_names_its_item_fails_that_item(line: str) -> None:
    from asyncimg import APIResponseValidationError

    result = BatchAPIResult.from_line(line)
    assert result.custom_id == "x"
    assert isinstance(result.error, APIResponseValidationError)
    assert not result.ok


def test_polling_backs_off_up_to_the_poll_interval() -> None:
    from asyncimg import APIConnectionError, InternalServerError, NotFoundError
    from asyncimg._batch.api import poll_delay, transient, window_seconds

    delays = [poll_delay(n, initial=0.5, poll_interval=60) for n in range(1, 10)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert poll_delay(1, initial=0.5, poll_interval=0) == 0.5
    assert window_seconds("24h") == 86400
    with pytest.raises(ValidationError):
        window_seconds("1d")
    assert transient(InternalServerError("x", status_code=502))
    assert transient(APIConnectionError("x"))
    assert not transient(NotFoundError("x", status_code=404))


def test_a_batch_object_is_read_and_keeps_what_it_does_not_know() -> None:
    batch = BatchAPIState.from_json({
        "id": "batch_1", "status": "failed", "endpoint": "/v1/images/generations",
        "request_counts": {"total": 3, "completed": 1, "failed": 2},
        "errors": {"object": "list", "data": [{"code": "bad", "message": "m", "line": 2}]},
        "metadata": {"dir": "out"}, "new_field": 7,
    })
    assert batch.done
    assert batch.request_counts.failed == 2
    assert (batch.errors[0].code, batch.errors[0].line) == ("bad", 2)
    assert batch.metadata == {"dir": "out"}
    assert batch.extra == {"new_field": 7}
    assert not BatchAPIState.from_json({"id": "b", "status": "in_progress"}).done


# -- against the emulator -------------------------------------------------------------------


@pytest.fixture
async def api(emu: Emulator) -> AsyncIterator[AsyncImagesClient]:
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, max_retries=2
    ) as c:
        c.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.004)
        yield c


def _lines(*prompts: str) -> list[bytes]:
    return [
        batch_api_line(f"id-{i}", "generate",
                   {"prompt": p, "model": "gpt-image-1", "size": "1024x1024", "quality": "low"})
        for i, p in enumerate(prompts)
    ]


async def test_submit_wait_and_results(emu: Emulator, api: AsyncImagesClient) -> None:
    emu.batches.pace = BatchPace(polls=2)
    job = await submit_batch(api, _lines("a", "b", f"c {CONTENT_POLICY_MARKER}"),
                             metadata={"directory": "out"})
    assert job.batch is not None
    assert job.batch.status == "validating"
    seen: list[str] = []
    batch = await job.wait(poll_interval=0, on_poll=lambda b: seen.append(b.status))
    assert seen == ["in_progress", "in_progress", "completed"]
    assert batch.request_counts.total == 3
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    assert batch.metadata == {"directory": "out"}
    assert batch.usage is not None
    assert batch.usage.total_tokens > 0
    results = {r.custom_id: r for r in [r async for r in job.results()]}
    assert set(results) == {"id-0", "id-1", "id-2"}
    assert results["id-0"].ok
    assert results["id-1"].ok
    assert isinstance(results["id-2"].error, BadRequestError)
    # The batch's lines took no images of the emulator's per-minute window.
    assert emu.arrivals == []
    uploaded = emu.requests("/v1/files", method="POST")
    assert len(uploaded) == 1
    assert len(emu.requests("/v1/batches", method="POST")) == 1


async def test_output_lines_come_in_any_order(emu: Emulator, api: AsyncImagesClient) -> None:
    emu.batches.pace = BatchPace(polls=0, shuffle=True)
    prompts = [f"p{i}" for i in range(30)]
    job = await submit_batch(api, _lines(*prompts))
    await job.wait(poll_interval=0)
    order = [r.custom_id async for r in job.results()]
    assert sorted(order) == sorted(f"id-{i}" for i in range(30))
    assert order != [f"id-{i}" for i in range(30)]


async def test_an_expired_batch_answers_half(emu: Emulator, api: AsyncImagesClient) -> None:
    emu.batches.pace = BatchPace(polls=0, outcome="expired", shuffle=False)
    job = await submit_batch(api, _lines("a", "b", "c", "d"))
    assert (await job.wait(poll_interval=0)).status == "expired"
    results = [r async for r in job.results()]
    assert [r.ok for r in results] == [True, True, False, False]
    assert all(isinstance(r.error, BatchRequestError) and r.error.code == "batch_expired"
               for r in results[2:])


async def test_a_failed_batch_says_why(emu: Emulator, api: AsyncImagesClient) -> None:
    file_id = await upload(api, [b'{"custom_id": "a", "method": "POST", "url": "/v1/x"}\n',
                                 b"not json\n"], "bad.jsonl")
    batch = await create(api, file_id, "generate")
    job = BatchAPIJob(api, batch.id)
    done = await job.wait(poll_interval=0)
    assert done.status == "failed"
    assert [(e.code, e.line) for e in done.errors] == [
        ("mismatched_endpoint", 1), ("invalid_json_line", 2),
    ]
    assert [r async for r in job.results()] == []


async def test_cancel(emu: Emulator, api: AsyncImagesClient) -> None:
    emu.batches.pace = BatchPace(polls=5, shuffle=False)
    job = await submit_batch(api, _lines("a", "b", "c", "d"))
    await job.retrieve()  # in progress
    assert (await job.cancel()).status == "cancelling"
    assert (await job.wait(poll_interval=0)).status == "cancelled"
    results = [r async for r in job.results()]
    assert [r.ok for r in results] == [True, True, False, False]
    assert results[3].error is not None
    assert getattr(results[3].error, "code", None) == (
        "batch_cancelled"
    )
    from asyncimg import ConflictError

    done = await submit_batch(api, _lines("e"))
    emu.batches.pace = BatchPace(polls=0)
    await done.wait(poll_interval=0)
    with pytest.raises(ConflictError):
        await done.cancel()


async def test_a_create_without_an_answer_is_adopted_not_repeated(
    emu: Emulator, api: AsyncImagesClient
) -> None:
    file_id = await upload(api, _lines("a"), "one.jsonl")
    # The create reaches the emulator and makes the batch, but the answer is lost.
    emu.add_fault(Fault.drop_mid_body(path="/v1/batches"))
    batch = await create(api, file_id, "generate")
    posts = emu.requests("/v1/batches", method="POST")
    assert [e.fault for e in posts] == ["drop_mid_body"]
    assert len(emu.batches.batches) == 1
    assert batch.id in emu.batches.batches
    assert (await find_batch(api, file_id)) == batch
    assert await find_batch(api, "file-unknown") is None


async def test_submit_refuses_what_cannot_be_one_batch(api: AsyncImagesClient) -> None:
    with pytest.raises(ValidationError) as caught:
        await submit_batch(api, [])
    assert caught.value.param == "lines"


async def test_the_files_api_needs_the_key(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key="sk-wrong", base_url=emu.base_url,
                                 rate_limit=None, max_retries=0) as c:
        from asyncimg import AuthenticationError

        with pytest.raises(AuthenticationError):
            await upload(c, _lines("a"), "x.jsonl")


# -- the official SDK against the emulator ----------------------------------------------


async def test_the_official_sdk_files_and_batches(emu: Emulator) -> None:
    emu.batches.pace = BatchPace(polls=1)
    async with openai.AsyncOpenAI(base_url=emu.base_url, api_key=TEST_KEY,
                                  max_retries=0) as sdk:
        file = await sdk.files.create(file=("in.jsonl", b"".join(_lines("a", "b"))),
                                      purpose="batch")
        assert (file.purpose, file.filename) == ("batch", "in.jsonl")
        assert (await sdk.files.retrieve(file.id)).bytes == file.bytes
        batch = await sdk.batches.create(input_file_id=file.id,
                                         endpoint="/v1/images/generations",
                                         completion_window="24h", metadata={"k": "v"})
        assert batch.status == "validating"
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            batch = await sdk.batches.retrieve(batch.id)
        assert batch.request_counts is not None
        assert batch.request_counts.completed == 2
        assert batch.output_file_id is not None
        content = await sdk.files.content(batch.output_file_id)
        lines = [json.loads(x) for x in content.text.splitlines()]
        assert {x["custom_id"] for x in lines} == {"id-0", "id-1"}
        listed = await sdk.batches.list(limit=10)
        assert [b.id for b in listed.data] == [batch.id]
        other = await sdk.batches.create(input_file_id=file.id,
                                         endpoint="/v1/images/generations",
                                         completion_window="24h")
        await sdk.batches.retrieve(other.id)
        cancelled = await sdk.batches.cancel(other.id)
        assert cancelled.status == "cancelling"
        deleted = await sdk.files.delete(file.id)
        assert deleted.deleted


# -- against a status endpoint of the test's own that keeps failing ---------------------------


class _Instant:
    """A clock whose sleeps pass at once: the give-up rule without waiting."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, callback: object) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps.append(deadline - self.t)
        self.t = max(self.t, deadline)


async def _always(status: int) -> tuple[web.AppRunner, str, list[int]]:
    seen: list[int] = []

    async def poll(request: web.Request) -> web.Response:
        seen.append(status)
        return web.json_response({"error": {"message": "nope"}}, status=status)

    app = web.Application()
    app.router.add_get("/v1/batches/{id}", poll)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen


async def test_polling_gives_up_after_failing_for_the_whole_window() -> None:
    from asyncimg import InternalServerError

    runner, url, seen = await _always(503)
    try:
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=url, rate_limit=None) as c:
            c.retry_policy = RetryPolicy(max_retries=2, initial=1.0, maximum=4.0)
            clock = _Instant()
            told: list[tuple[float, float]] = []
            with pytest.raises(InternalServerError):
                await BatchAPIJob(c, "batch_x").poll(
                    poll_interval=60, give_up_after=600, clock=clock,  # type: ignore[arg-type]
                    on_retry=lambda exc, delay, until: told.append((delay, until)))
    finally:
        await runner.cleanup()
    assert clock.sleeps[:7] == [1, 2, 4, 8, 16, 32, 60]
    assert max(clock.sleeps) == 60
    assert clock.t >= 600
    assert {until for _delay, until in told} == {600}
    assert len(seen) == len(clock.sleeps) + 1  # one request per poll: no hidden retries


async def test_polling_stops_at_once_on_a_refusal() -> None:
    from asyncimg import AuthenticationError

    runner, url, seen = await _always(401)
    try:
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=url, rate_limit=None) as c:
            with pytest.raises(AuthenticationError):
                await BatchAPIJob(c, "batch_x").poll(poll_interval=60, clock=_Instant())  # type: ignore[arg-type]
    finally:
        await runner.cleanup()
    assert seen == [401]
