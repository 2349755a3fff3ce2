"""The API key is reachable from no error: not its chain, not its attributes, not a pickle.

``raise ... from None`` only hides aiohttp's exception from a traceback;
``__context__`` still holds it, and its ``request_info.headers`` holds the key.
These tests walk everything an error reporter could reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import AsyncIterator, Iterator

import pytest

from asyncimg import APIConnectionError, APIError, AsyncImagesClient
from asyncimg._retry import RetryPolicy

from .conftest import TEST_KEY


def reachable(root: object, depth: int = 12) -> Iterator[object]:
    """Every object reachable from ``root`` through exception links, attributes and containers."""
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(root, 0)]
    while todo:
        obj, level = todo.pop()
        if id(obj) in seen or level > depth:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, (str, bytes, int, float, type(None))):
            continue
        children: list[object] = []
        if isinstance(obj, BaseException):
            children += [obj.__cause__, obj.__context__, *obj.args]
        if isinstance(obj, dict):
            children += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children += list(obj)
        elif hasattr(obj, "items") and callable(obj.items):
            with contextlib.suppress(Exception):  # not a mapping after all
                children += [v for pair in obj.items() for v in pair]
        children += list(getattr(obj, "__dict__", {}).values())
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if isinstance(name, str) and hasattr(obj, name):
                    children.append(getattr(obj, name))
        todo += [(child, level + 1) for child in children]


def assert_no_key(error: BaseException) -> None:
    for obj in reachable(error):
        if isinstance(obj, (str, bytes)):
            assert TEST_KEY not in (obj if isinstance(obj, str) else obj.decode("latin-1"))
    assert TEST_KEY.encode() not in pickle.dumps(error)


def test_the_walker_finds_a_key_in_a_context() -> None:
    """The walk itself: a key two links away, inside a mapping attribute, is found."""
    inner = ValueError("x")
    inner.headers = {"Authorization": f"Bearer {TEST_KEY}"}  # type: ignore[attr-defined]
    outer = RuntimeError("y")
    outer.__context__ = inner
    with pytest.raises(AssertionError):
        assert_no_key(outer)


@pytest.fixture
async def bad_status_line() -> AsyncIterator[str]:
    """A server that answers every request with a malformed status line."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc Broken\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_malformed_status_line_leaves_no_key_in_the_error(
    bad_status_line: str, stream: bool
) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=bad_status_line,
                                 rate_limit=None) as client:
        client.retry_policy = RetryPolicy(max_retries=0)
        with pytest.raises(APIConnectionError) as info:
            await client.generate("a cat", model="gpt-image-1", stream=stream)
    assert info.value.__context__ is None
    assert_no_key(info.value)


async def test_a_refused_connection_leaves_no_key_in_the_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=f"http://127.0.0.1:{port}/v1",
                                 rate_limit=None) as client:
        client.retry_policy = RetryPolicy(max_retries=0)
        with pytest.raises(APIError) as info:
            await client.generate("a cat")
    assert_no_key(info.value)
