"""Ctrl-C, as a user presses it: the first stops within a second when nothing is on the
wire (a request sleeping before a retry is not), the second at once, the Batch API
route at once whatever ``--poll-interval``. Real processes, real SIGINTs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncimg.cli import EXIT_SIGINT
from asyncimg.testing import BatchPace, Emulator, Fault

from .conftest import TEST_KEY

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    env["OPENAI_API_KEY"] = TEST_KEY
    return env


def _manifest(out: Path) -> list[dict[str, object]]:
    path = out / "manifest.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def _start(emu: Emulator, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncimg", *args, "--base-url", emu.base_url, cwd=ROOT,
        env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def _interrupt(proc: asyncio.subprocess.Process) -> tuple[float, str, str]:
    """SIGINT, then the seconds until the process ended, its stdout and stderr."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return time.monotonic() - started, out.decode(), err.decode()


async def test_the_first_ctrl_c_does_not_wait_out_a_retry_after(tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(6)))
    out = tmp_path / "out"
    async with Emulator(api_key=TEST_KEY) as emu:
        emu.add_fault(Fault.status(429, retry_after=60))
        proc = await _start(emu, "batch", str(src), "-o", str(out), "--model", "dall-e-2",
                            "--size", "256x256", "--rate", "off", "--concurrency", "4")
        await _until(lambda: len(emu.requests(status=429)) == 1)
        await asyncio.sleep(0.2)  # one asleep on its Retry-After, the rest held by the pause
        seconds, stdout, stderr = await _interrupt(proc)
    assert proc.returncode == EXIT_SIGINT, stderr
    assert seconds < 2.0, stderr
    assert "waiting for" not in stderr  # nothing is on the wire
    assert "asyncimg: stopping: nothing new is sent\n" in stderr
    lines = _manifest(out)
    assert all(line["status"] == "ok" for line in lines)  # the sleeper is not run
    assert f"left (rerun to resume)       {6 - len(lines)}" in stdout
    # Its send is kept for the next run's limiter and the report.
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs[-1]["unfinished_sent"]) == 1


async def test_the_second_ctrl_c_cancels_at_once(tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(4)))
    out = tmp_path / "out"
    async with Emulator(api_key=TEST_KEY, latency=30.0) as emu:
        proc = await _start(emu, "batch", str(src), "-o", str(out), "--model", "dall-e-2",
                            "--size", "256x256", "--rate", "off", "--concurrency", "4")
        await _until(lambda: len(emu.journal) + len(emu.arrivals) >= 4)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        line = b""
        while b"stopping" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"waiting for 4 requests in flight (again to cancel them)" in line
        seconds, _, stderr = await _interrupt(proc)
    assert proc.returncode == EXIT_SIGINT, stderr
    assert seconds < 2.0, stderr


async def test_ctrl_c_on_the_batch_api_route_is_prompt_whatever_the_poll_interval(
    tmp_path: Path,
) -> None:
    src = tmp_path / "p.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "out"
    async with Emulator(api_key=TEST_KEY) as emu:
        emu.batches.pace = BatchPace(polls=10**6)
        proc = await _start(emu, "batch", str(src), "-o", str(out), "--via", "batch-api",
                            "--poll-interval", "60", "--model", "dall-e-2", "--rate", "off")
        await _until(lambda: any(e.method == "GET" and e.path.startswith("/v1/batches/")
                                 for e in emu.journal))
        emu.api_latency = 30.0  # the next poll hangs: Ctrl-C must not wait for it either
        await asyncio.sleep(0.1)
        seconds, _, stderr = await _interrupt(proc)
    assert proc.returncode == EXIT_SIGINT, stderr
    assert seconds < 2.0, stderr
    assert "in flight" not in stderr
    assert "images/min" not in stderr
    assert "rate limit" not in stderr
