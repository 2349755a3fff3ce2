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
import tempfile
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


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


@contextlib.contextmanager
def running_cluster(nodes: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of ``nodes`` masters on loopback (no replicas), its slots spread
    by ``redis-cli --cluster create``; skips when redis-server cannot run one."""
    binary = redis_server_binary()
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not on PATH")
    with tempfile.TemporaryDirectory() as folder:
        servers = []
        try:
            for _ in range(nodes):
                port = _free_cluster_port()
                server = RedisServer(binary, "--cluster-enabled", "yes", "--dir", folder,
                                     "--cluster-config-file", f"nodes-{port}.conf")
                server.port = port
                server.start()
                servers.append(server)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=30,
            )
            deadline = time.monotonic() + 10.0
            while not all(_cluster_ok(cli, s.port) for s in servers):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.05)
            yield servers
        finally:
            for server in servers:
                server.kill()


def _cluster_ok(cli: str, port: int) -> bool:
    info = subprocess.run([cli, "-p", str(port), "cluster", "info"], capture_output=True,
                          text=True, timeout=5).stdout
    return "cluster_state:ok" in info
