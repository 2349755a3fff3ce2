"""examples/celery_app.py: real prefork Celery workers, a real Redis broker, one global rate."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import asyncimg
from asyncimg import APIConnectionError, RateLimitError, retry_countdown
from asyncimg.testing import Fault, emulator_thread

from ._redis_server import RedisServer, running_redis

ROOT = Path(__file__).resolve().parent.parent
TASKS = 40


def _rate_limited(headers: dict[str, str]) -> RateLimitError:
    return RateLimitError("slow down", status_code=429, headers=headers, body=None)


def test_retry_countdown_is_the_servers_wait() -> None:
    assert retry_countdown(_rate_limited({"retry-after-ms": "1500"}), 4, now=0.0) == 1.5


def test_retry_countdown_backs_off_without_a_wait() -> None:
    error = APIConnectionError("connection reset")
    waits = [retry_countdown(error, retries, now=0.0, rand=lambda: 0.0) for retries in (0, 1, 2)]
    assert waits == [0.5, 1.0, 2.0]  # the policy's doubling, not Celery's 180 s default


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError("quota", status_code=429, headers={}, body=None,
                       code="insufficient_quota"),
        asyncimg.BadRequestError("no", status_code=400, headers={}, body=None),
        ValueError("not an API error"),
    ],
)
def test_retry_countdown_is_none_for_what_waiting_cannot_fix(error: BaseException) -> None:
    assert retry_countdown(error, 0, now=0.0) is None


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Workers:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str) -> None:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool",
                 "prefork", "--concurrency", "2", "-n", f"{name}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                cwd=ROOT / "examples", env=self.env, stdout=sink, stderr=subprocess.STDOUT,
            )
        self.procs.append((proc, log))

    def log(self, index: int) -> str:
        return self.procs[index][1].read_text(errors="replace")

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    pytest.importorskip("celery")
    with running_redis() as server:
        yield server


@pytest.mark.subprocess
def test_two_prefork_workers_keep_one_rate_and_lose_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from celery import Celery

    out = tmp_path / "out"
    broker = f"redis://127.0.0.1:{redis_server.port}/0"
    with emulator_thread(images_per_minute=(10, 2.0), latency=0.2) as emu:
        # Two 429s the client does not retry itself: Celery retries them, after their wait.
        emu.add_fault(Fault.status(429, retry_after=0.4, times=2, path="generate"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ASYNCIMG_"))}
        env |= {
            "CELERY_BROKER_URL": broker,
            "ASYNCIMG_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
            "ASYNCIMG_RATE": "10/2.5s",  # the server's 10 per 2 s, with 0.5 s for the trip
            "ASYNCIMG_LIMIT_NAME": "celery-test",
            "ASYNCIMG_OUTPUT": str(out),
            "ASYNCIMG_MAX_RETRIES": "0",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": emu.base_url,
            "PYTHONPATH": str(ROOT),
        }
        workers = Workers(tmp_path, env)
        try:
            workers.start("w1")
            workers.start("w2")
            for index in (0, 1):
                _wait_until(lambda i=index: " ready." in workers.log(i), 60, "a worker")
            app = Celery("sender", broker=broker)
            try:
                for i in range(TASKS):
                    app.send_task(
                        "images.generate", args=[f"a lantern number {i}", f"lantern-{i}"],
                        kwargs={"model": "dall-e-2", "size": "256x256"},
                    )
            finally:
                app.close()
            done = lambda: len(list(out.glob("lantern-*.png")))  # noqa: E731
            _wait_until(lambda: done() >= 10, 60, "the first images")
            # A worker process dies mid-task. A pool process may be between two tasks at
            # the moment it is killed: then kill another, until one was at work.
            for _ in range(5):
                pool = _children(workers.procs[0][0].pid)
                assert pool, workers.log(0)
                os.kill(pool[0], signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    _wait_until(lambda: "WorkerLostError" in workers.log(0), 5, "a lost task")
                if "WorkerLostError" in workers.log(0) or done() >= TASKS:
                    break
            _wait_until(lambda: done() >= TASKS, 90, "every image")
            fullest = emu.max_images_in_window()
            refused = emu.requests("generate", status=429)
            sent = emu.requests("generate")
        finally:
            workers.stop()
        logs = workers.log(0) + workers.log(1)
    names = sorted(p.name for p in out.glob("lantern-*.png"))
    assert names == sorted(f"lantern-{i}-0.png" for i in range(TASKS))
    assert "WorkerLostError" in logs  # the kill hit a task, which acks-late delivered again
    assert fullest <= 10
    assert len(refused) == 2  # the two scripted ones: the shared limiter never went over
    assert logs.count("Retry in 0.4s") == 2, logs  # the server's wait, not Celery's 180 s
    assert TASKS + 2 <= len(sent) <= TASKS + 2 + 1  # + at most the killed one's request
