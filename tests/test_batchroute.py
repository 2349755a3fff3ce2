"""``asyncimg batch --via batch-api`` as a user runs it: a real subprocess against an emulator
in this process, SIGKILLed at each stage, then run again: nothing is created twice, every
item ends with exactly one manifest line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from asyncimg import AsyncImagesClient
from asyncimg._batch import BatchSummary, ProgressSink, open_text, run_via_batch_api
from asyncimg._retry import RetryPolicy
from asyncimg.testing import CONTENT_POLICY_MARKER, BatchPace, Emulator, Fault

from .conftest import TEST_KEY
from .pictures import encode, quadrants

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [f"a lantern number {i}" for i in range(6)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL",)}
    env["OPENAI_API_KEY"] = TEST_KEY
    return env


async def _cli(
    emu: Emulator,
    *args: str,
    kill_when: Callable[[], bool] | None = None,
) -> tuple[int, str, str]:
    """Run ``python -m asyncimg ARGS --base-url EMU``; SIGKILL it once ``kill_when()`` holds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncimg", *args, "--base-url", emu.base_url,
        cwd=ROOT, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    if kill_when is not None:
        for _ in range(2000):
            if kill_when() or proc.returncode is not None:
                break
            await asyncio.sleep(0.005)
        assert proc.returncode is None, "the run ended before the stage to kill it at"
        proc.send_signal(signal.SIGKILL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def _batch_args(prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(prompts), "-o", str(out), "--via", "batch-api",
            "--poll-interval", "0.01", "--model", "dall-e-2", "--size", "256x256",
            "--rate", "off", *extra]


def _manifest(out: Path) -> list[dict[str, object]]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def _inputs(emu: Emulator) -> int:
    return sum(1 for f in emu.batches.files.values() if f.purpose == "batch")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _polled(emu: Emulator) -> Callable[[], bool]:
    """A kill condition: the batch has been polled once."""
    return lambda: any(
        e.method == "GET" and e.path.startswith("/v1/batches/") for e in emu.journal
    )


async def _rerun_does_the_rest(emu: Emulator, prompts: Path, out: Path, *extra: str) -> None:
    """Run again: every item done once, from one uploaded input and one batch."""
    code, _, stderr = await _cli(emu, *_batch_args(prompts, out, *extra))
    assert code == 0, stderr
    _all_done_once(out)
    assert (_inputs(emu), len(emu.batches.batches)) == (1, 1)


def _all_done_once(out: Path) -> None:
    lines = _manifest(out)
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) == len(PROMPTS)
    assert all(line["status"] == "ok" for line in lines)
    for line in lines:
        for name in line["files"]:  # type: ignore[attr-defined]
            assert (out / name).is_file()


async def test_a_run_makes_one_batch_and_saves_every_item(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    emu.batches.pace = BatchPace(polls=2)
    out = tmp_path / "out"
    code, _, stderr = await _cli(emu, *_batch_args(prompts, out))
    assert code == 0, stderr
    _all_done_once(out)
    assert (_inputs(emu), len(emu.batches.batches)) == (1, 1)
    assert "completed, 6/6 completed, 0 failed" in stderr
    assert emu.arrivals == []  # nothing went to the images endpoint directly
    (batch,) = emu.batches.batches.values()
    sent = [json.loads(x) for x in emu.batches.files[batch.input_file_id].data.splitlines()]
    assert {x["custom_id"] for x in sent} == {line["id"] for line in _manifest(out)}
    assert sent[0]["body"] == {"prompt": PROMPTS[0], "model": "dall-e-2", "size": "256x256"}
    # A rerun has nothing to do and sends nothing.
    before = len(emu.journal)
    code, _, _ = await _cli(emu, *_batch_args(prompts, out))
    assert code == 0
    assert len(emu.batches.batches) == 1
    assert [e.path for e in emu.journal[before:]] == []


async def test_killed_after_the_upload_lost_its_answer(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    emu.add_fault(Fault.delay(30, path="/v1/files"))
    code, _, _ = await _cli(emu, *_batch_args(prompts, out),
                            kill_when=lambda: _inputs(emu) == 1)
    assert code == -signal.SIGKILL
    emu.clear_faults()
    await _rerun_does_the_rest(emu, prompts, out)


async def test_killed_after_the_create_lost_its_answer(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    emu.add_fault(Fault.delay(30, path="/v1/batches"))
    code, _, _ = await _cli(emu, *_batch_args(prompts, out),
                            kill_when=lambda: len(emu.batches.batches) == 1)
    assert code == -signal.SIGKILL
    assert json.loads((out / "batchapi.json").read_text())["jobs"][0]["batch_id"] is None
    emu.clear_faults()
    await _rerun_does_the_rest(emu, prompts, out)


async def test_killed_while_polling(emu: Emulator, prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=10**6)
    code, _, _ = await _cli(emu, *_batch_args(prompts, out), kill_when=_polled(emu))
    assert code == -signal.SIGKILL
    (batch,) = emu.batches.batches.values()
    batch.pace = BatchPace(polls=1)
    await _rerun_does_the_rest(emu, prompts, out)


async def test_killed_while_writing_results(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=0)
    # Two downloads go through, the third hangs: the kill lands between manifest lines.
    emu.add_fault(Fault.delay(0.001, times=2, path="/blobs/"), Fault.delay(30, path="/blobs/"))
    code, _, _ = await _cli(emu, *_batch_args(prompts, out, "--format", "url"),
                            kill_when=lambda: len(_manifest(out)) == 2)
    assert code == -signal.SIGKILL
    assert len(_manifest(out)) == 2
    emu.clear_faults()
    await _rerun_does_the_rest(emu, prompts, out, "--format", "url")


async def test_failed_items_go_again_as_a_new_batch_of_just_them(
    emu: Emulator, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"a fox\na {CONTENT_POLICY_MARKER} owl\na heron\n")
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=0)
    code, _, _ = await _cli(emu, *_batch_args(prompts, out))
    assert code == 1
    failed = [line for line in _manifest(out) if line["status"] == "failed"]
    assert len(failed) == 1
    error = failed[0]["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["code"], error["status"]) == (
        "ContentPolicyError", "content_policy_violation", 400,
    )
    assert failed[0]["request_id"]
    code, _, _ = await _cli(emu, *_batch_args(prompts, out))
    assert code == 1
    second = sorted(emu.batches.batches.values(), key=lambda b: b.created)[-1]
    assert len(emu.batches.batches) == 2
    assert len(second.lines) == 1


async def test_an_expired_batch_leaves_its_rest_failed(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=0, outcome="expired")
    code, _, _ = await _cli(emu, *_batch_args(prompts, out))
    assert code == 1
    statuses = sorted(str(line["status"]) for line in _manifest(out))
    assert statuses == ["failed"] * 3 + ["ok"] * 3
    codes = {line["error"]["code"] for line in _manifest(out)  # type: ignore[index]
             if line["status"] == "failed"}
    assert codes == {"batch_expired"}


async def test_batches_status_and_cancel(emu: Emulator, prompts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=10**6)
    await _cli(emu, *_batch_args(prompts, out), kill_when=_polled(emu))
    code, stdout, _ = await _cli(emu, "batches", "status", str(out))
    assert code == 0
    (batch,) = emu.batches.batches.values()
    assert f"{batch.id}: in_progress" in stdout
    code, stdout, _ = await _cli(emu, "batches", "cancel", str(out))
    assert code == 0
    assert f"{batch.id}: cancelling" in stdout
    code, _, _ = await _cli(emu, *_batch_args(prompts, out))
    assert code == 1  # the cancelled half is failed, the rest saved
    assert len(_manifest(out)) == len(PROMPTS)
    assert len(emu.batches.batches) == 1


async def test_a_batch_unknown_to_the_server_is_a_usage_error(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=10**6)
    await _cli(emu, *_batch_args(prompts, out), kill_when=_polled(emu))
    emu.batches.reset()
    code, _, stderr = await _cli(emu, *_batch_args(prompts, out))
    assert code == 2
    assert "batchapi.json" in stderr
    assert "unknown" in stderr


async def test_a_bad_batch_option_is_a_usage_error_and_sends_nothing(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, stderr = await _cli(emu, *_batch_args(prompts, out, "-n", "11"))
    assert code == 2
    assert "-n" in stderr
    assert len(emu.journal) == 0
    assert not (out / "manifest.jsonl").exists()


async def test_a_refused_key_stops_at_once_with_the_fatal_status(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncimg", *_batch_args(prompts, out), "--base-url",
        emu.base_url, cwd=ROOT, env={**_env(), "OPENAI_API_KEY": "sk-wrong-key-0000"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3, err.decode()
    assert "OPENAI_API_KEY" in err.decode()
    assert len(emu.journal) == 1  # the upload, refused; nothing else was tried
    assert emu.batches.files == {}


async def test_ctrl_c_while_polling_stops_and_a_rerun_resumes(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    emu.batches.pace = BatchPace(polls=10**6)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncimg", *_batch_args(prompts, out), "--base-url",
        emu.base_url, cwd=ROOT, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    polled = _polled(emu)
    for _ in range(2000):
        if polled():
            break
        await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    assert "rerun" in err.decode()
    (batch,) = emu.batches.batches.values()
    batch.pace = BatchPace(polls=0)
    code, _, stderr = await _cli(emu, *_batch_args(prompts, out))
    assert code == 0, stderr
    _all_done_once(out)
    assert len(emu.batches.batches) == 1


# -- against a Batch API of the test's own that misbehaves -----------------------------------


class HostileBatches:
    """Just enough of the Files and Batches endpoints, with the faults of issue 29.

    ``answers(ids)`` builds the output file's lines for the uploaded custom ids;
    each download of the output file takes the next of ``reads`` (the last repeats).
    """

    def __init__(self, answers: Callable[[list[str]], list[bytes]], *,
                 poll_errors: int = 0, reads: Callable[[list[bytes]], list[bytes]] | None = None,
                 counted: int | None = None) -> None:
        self.answers = answers
        self.poll_errors = poll_errors
        self.cut = reads
        self.counted = counted
        self.inputs: list[bytes] = []
        self.batches = 0
        self.output_reads = 0
        self.polls: list[int] = []

    def _ids(self) -> list[str]:
        return [json.loads(line)["custom_id"] for line in self.inputs[-1].splitlines()]

    def app(self) -> web.Application:
        async def upload(request: web.Request) -> web.Response:
            form = await request.post()
            field = form["file"]
            assert isinstance(field, web.FileField)
            self.inputs.append(field.file.read())
            return web.json_response({"id": f"file-in-{len(self.inputs)}"})

        async def files(request: web.Request) -> web.Response:
            return web.json_response({"data": []})

        async def create(request: web.Request) -> web.Response:
            self.batches += 1
            return web.json_response(self._batch("validating"))

        async def poll(request: web.Request) -> web.Response:
            if self.poll_errors:
                self.poll_errors -= 1
                self.polls.append(500)
                return web.json_response({"error": {"message": "flaky"}}, status=500)
            self.polls.append(200)
            return web.json_response(self._batch("completed"))

        async def content(request: web.Request) -> web.Response:
            if request.match_info["id"].startswith("file-in-"):
                return web.Response(body=self.inputs[-1])
            self.output_reads += 1
            lines = self.answers(self._ids())
            if self.cut is not None and self.output_reads == 1:
                lines = self.cut(lines)
            return web.Response(body=b"".join(lines))

        app = web.Application()
        app.router.add_post("/v1/files", upload)
        app.router.add_get("/v1/files", files)
        app.router.add_post("/v1/batches", create)
        app.router.add_get("/v1/batches/{id}", poll)
        app.router.add_get("/v1/files/{id}/content", content)
        return app

    def _batch(self, status: str) -> dict[str, object]:
        total = len(self._ids())
        counted = total if self.counted is None else self.counted
        return {"id": f"batch_{self.batches}", "status": status,
                "input_file_id": f"file-in-{len(self.inputs)}",
                "output_file_id": "file-out" if status == "completed" else None,
                "request_counts": {"total": total, "completed": counted, "failed": 0}}


_PNG = base64.b64encode(encode(quadrants(8, 8))).decode()


def _ok(custom_id: str) -> bytes:
    body = {"created": 1, "data": [{"b64_json": _PNG}]}
    return json.dumps({"custom_id": custom_id, "response": {
        "status_code": 200, "request_id": f"req_{custom_id}", "body": body}, "error": None,
    }).encode() + b"\n"


def _refused(custom_id: str) -> bytes:
    body = {"error": {"message": "busy", "type": "server_error"}}
    return json.dumps({"custom_id": custom_id, "response": {
        "status_code": 500, "request_id": "req_x", "body": body}, "error": None,
    }).encode() + b"\n"


class _Ticks(ProgressSink):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def tick(self, summary: BatchSummary) -> None:
        if summary.batch is not None and summary.batch.note:
            self.notes.append(summary.batch.note)


async def _route(server: HostileBatches, out: Path, prompts: Path,
                 sink: ProgressSink | None = None) -> BatchSummary:
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=f"http://127.0.0.1:{port}/v1",
                                     rate_limit=None, max_retries=2) as client:
            client.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.004)
            return await run_via_batch_api(
                client, open_text(str(prompts)), "txt", out, poll_interval=0.01,
                params={"model": "dall-e-2", "size": "256x256"}, progress=sink,
                server="http://hostile.test/v1")
    finally:
        await runner.cleanup()


def _by_status(out: Path) -> dict[str, list[dict[str, object]]]:
    lines = _manifest(out)
    assert len({line["id"] for line in lines}) == len(lines)
    grouped: dict[str, list[dict[str, object]]] = {"ok": [], "failed": []}
    for line in lines:
        grouped[str(line["status"])].append(line)
    return grouped


async def test_one_malformed_line_fails_at_most_its_item(prompts: Path, tmp_path: Path) -> None:
    def answers(ids: list[str]) -> list[bytes]:
        lines = [_ok(i) for i in ids]
        lines[1] = b'{"id": "batch_req_9", "resp\n'  # names no item: skipped, reported
        lines[2] = _ok(ids[2])[:60] + b"\n"  # cut, but its custom_id can be read
        return lines

    sink = _Ticks()
    out = tmp_path / "out"
    summary = await _route(HostileBatches(answers), out, prompts, sink)
    assert (summary.ok, summary.failed) == (4, 2)
    grouped = _by_status(out)
    assert all((out / str(f)).is_file() for x in grouped["ok"] for f in x["files"])  # type: ignore[attr-defined]
    errors = sorted(x["error"]["type"] for x in grouped["failed"])  # type: ignore[index]
    assert errors == ["APIResponseValidationError", "BatchRequestError"]
    assert any("file-out line 2" in note and "skipped" in note for note in sink.notes)


async def test_polling_rides_out_a_run_of_500s(prompts: Path, tmp_path: Path) -> None:
    server = HostileBatches(lambda ids: [_ok(i) for i in ids], poll_errors=6)
    sink = _Ticks()
    summary = await _route(server, tmp_path / "out", prompts, sink)
    assert summary.ok == len(PROMPTS)
    assert server.polls[:7] == [500] * 6 + [200]
    assert "poll failed (500), polling again in" in sink.notes[0]
    assert "giving up at" in sink.notes[0]


async def test_a_success_after_a_failure_for_the_same_item_wins(
    prompts: Path, tmp_path: Path
) -> None:
    server = HostileBatches(lambda ids: [_refused(ids[0])] + [_ok(i) for i in ids],
                            counted=len(PROMPTS) + 1)
    out = tmp_path / "out"
    summary = await _route(server, out, prompts)
    assert (summary.ok, summary.failed) == (len(PROMPTS), 0)


async def test_an_output_file_cut_at_a_line_boundary_is_read_again(
    prompts: Path, tmp_path: Path
) -> None:
    server = HostileBatches(lambda ids: [_ok(i) for i in ids], reads=lambda lines: lines[:3])
    out = tmp_path / "out"
    summary = await _route(server, out, prompts)
    assert (summary.ok, summary.failed) == (len(PROMPTS), 0)
    assert server.output_reads == 2


async def test_an_output_file_short_every_time_is_left_to_a_rerun(
    prompts: Path, tmp_path: Path
) -> None:
    from asyncimg import APIResponseValidationError

    server = HostileBatches(lambda ids: [_ok(i) for i in ids][:3])
    out = tmp_path / "out"
    with pytest.raises(APIResponseValidationError, match="request_counts"):
        await _route(server, out, prompts)
    assert len(_by_status(out)["ok"]) == 3
    assert _by_status(out)["failed"] == []
    server.answers = lambda ids: [_ok(i) for i in ids]
    summary = await _route(server, out, prompts)
    assert summary.ok == 3
    assert len(_by_status(out)["ok"]) == len(PROMPTS)
    assert server.batches == 1


async def test_an_image_orphaned_by_a_kill_is_overwritten_not_doubled(
    prompts: Path, tmp_path: Path
) -> None:
    server = HostileBatches(lambda ids: [_ok(i) for i in ids])
    out = tmp_path / "out"
    await _route(server, out, prompts)
    # As if killed after each image and before its manifest line: images without lines.
    (out / "manifest.jsonl").unlink()
    (out / "batchapi.json").unlink()
    await _route(server, out, prompts)
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == len(PROMPTS)
    assert not any(name.endswith("-0-1.png") for name in names)


async def test_the_cli_polls_through_500s_and_says_so(
    emu: Emulator, prompts: Path, tmp_path: Path
) -> None:
    emu.batches.pace = BatchPace(polls=1)
    emu.add_fault(Fault.status(500, times=3, path="/v1/batches/"))
    out = tmp_path / "out"
    code, _, stderr = await _cli(emu, *_batch_args(prompts, out, "--max-retries", "2"))
    assert code == 0, stderr
    _all_done_once(out)
    assert "poll failed (500), polling again in" in stderr
