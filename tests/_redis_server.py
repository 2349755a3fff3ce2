"""A real ``redis-server`` on a free port of 127.0.0.1, for the RedisLimiter's tests.

The binary comes from PATH (``.ci/run`` installs Debian's ``redis-server``). Without
it the tests that need one skip, saying why, except under CI (``CI=true``), where
they fail: CI must never skip them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process, with no persistence; can be killed and restarted."""

    def __init__(self, binary: str, *options: str) -> None:
        self.binary = binary
        self.options = options
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (at most 5 s) until it accepts connections."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (its state is lost) and wait for it to be gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the test (fails it under CI) without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must run the Redis tests")
        pytest.skip(message)
    pytest.importorskip("redis", reason="the redis extra is not installed")
    return binary


@contextlib.contextmanager
def running_redis(*options: str) -> Iterator[RedisServer]:
    """A started server with extra command-line ``options`` (``"--maxmemory", "2mb"``; see
    :func:`redis_server_binary` for when it skips), killed after."""
    server = RedisServer(redis_server_binary(), *options)
    server.start()
    try:
        yield server
    finally:
        server.kill()
