"""``--redis URL`` / ``$ASYNCIMG_REDIS_URL`` and ``--limit-name`` on the commands that send."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._redis_server import RedisServer, running_redis

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
EMU = ["--emulator", "--model", "dall-e-2", "--size", "256x256"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ASYNCIMG_REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        env=base | (env or {}), timeout=60,
    )


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _keys(server: RedisServer) -> list[str]:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return sorted(k.decode() for k in client.keys("*"))
    finally:
        client.close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_batch_shares_its_rate_through_redis(
    how: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lantern\na kite\n")
    name = f"cli-{how}"
    if how == "flag":
        run = _cli("batch", str(prompts), "-o", str(tmp_path / "out"), *EMU, "--rate", "5/s",
                   "--redis", redis_server.url, "--limit-name", name)
    else:
        run = _cli("batch", str(prompts), "-o", str(tmp_path / "out"), *EMU, "--rate", "5/s",
                   "--limit-name", name, env={"ASYNCIMG_REDIS_URL": redis_server.url})
    assert run.returncode == 0, run.stderr
    assert f"asyncimg:{{{name}}}:win" in _keys(redis_server)


def test_redis_down_fails_the_command_without_echoing_the_url(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = _cli("generate", "a lantern", "-o", str(tmp_path), *EMU,
               "--redis", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert run.returncode == 3  # as a batch: every call would fail the same way
    assert run.stderr.count("check --redis") == 1, run.stderr  # said once
    assert "hunter2" not in run.stderr + run.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--limit-name", "sk-proj-secret"], "--limit-name"),
        (["--limit-name", "a b"], "--limit-name"),
        (["--rate", "off"], "--redis"),
        (["--redis", "http://:hunter2@127.0.0.1/"], "--redis"),
    ],
)
def test_bad_shared_limit_flags_are_usage_errors(
    args: list[str], flag: str, tmp_path: Path
) -> None:
    if "--redis" not in args:
        args = [*args, "--redis", "redis://127.0.0.1:1/0"]
    run = _cli("generate", "a lantern", "-o", str(tmp_path), *EMU, *args)
    assert run.returncode == 2, run.stderr
    assert f"error: {flag}" in run.stderr
    assert "hunter2" not in run.stderr
    assert "sk-proj-secret" not in run.stderr


def test_a_batch_stops_when_the_shared_limit_is_out_of_reach(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(20)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = _cli("batch", str(prompts), "-o", str(tmp_path / "out"), *EMU,
               "--redis", f"redis://127.0.0.1:{port}/0")
    assert run.returncode == 3, run.stderr  # fatal: every item would fail the same way
    assert run.stderr.count("out of reach") == 1, run.stderr  # said once
    assert "LimiterUnavailableError" not in run.stdout + run.stderr  # not an item's failure
    manifest = tmp_path / "out" / "manifest.jsonl"
    assert not manifest.exists() or manifest.read_text() == ""  # nothing was sent


def test_limit_name_needs_redis_and_its_default_is_in_the_help(tmp_path: Path) -> None:
    run = _cli("generate", "a lantern", "-o", str(tmp_path), *EMU, "--limit-name", "team-a")
    assert run.returncode == 2, run.stderr
    assert "--limit-name: only with --redis" in run.stderr
    assert not list(tmp_path.iterdir())
    helped = _cli("batch", "--help")
    assert "(default: openai-images)" in " ".join(helped.stdout.split())
