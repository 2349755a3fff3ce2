"""``asyncimg batch --via batch-api`` as a user runs it: a real subprocess against an emulator
in this process, SIGKILLed at each stage, then run again: nothing is created twice, every
item ends with exactly one manifest line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncimg.testing import CONTENT_POLICY_MARKER, BatchPace, Emulator, Fault

from .conftest import TEST_KEY

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
