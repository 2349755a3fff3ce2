"""When a permit is spent: the request on the wire, not before; nothing written, refunded.

Real servers on 127.0.0.1: the emulator, and a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from asyncimg import APIConnectionError, AsyncImagesClient, RateLimit
from asyncimg._body import Body
from asyncimg._transport import Transport, _Wire
from asyncimg.testing import Emulator, Fault, encode_png

from .conftest import TEST_KEY


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_spends_no_budget() -> None:
    """RateLimit(10, 60), n=10, a refused connection: the images come back at once."""
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=f"http://127.0.0.1:{closed_port()}/v1",
        rate_limit=RateLimit(10, 60.0), max_retries=1,
    ) as client:
        client.retry_policy = client.retry_policy.__class__(
            max_retries=1, initial=0.001, maximum=0.002
        )
        with pytest.raises(APIConnectionError):
            # The retry would wait a whole window if the first attempt had spent its 10.
            await asyncio.wait_for(client.generate("p", model="dall-e-2", n=10), 5.0)
        stats = client.limiter.stats()
    assert stats.sent == 0
    assert stats.refunded == 20
    assert stats.available == 10


async def test_a_request_dropped_after_it_was_written_is_spent() -> None:
    async with Emulator(api_key=TEST_KEY) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(10, 60.0),
        max_retries=0,
    ) as client:
        emu.add_fault(Fault.drop())
        with pytest.raises(APIConnectionError):
            await client.generate("p", model="dall-e-2", n=3)
        stats = client.limiter.stats()
    assert stats.sent == 3
    assert stats.refunded == 0


async def test_the_stamp_waits_for_a_pooled_connection() -> None:
    """With one connection, the second request is stamped when it gets it, not before."""
    async with Emulator(api_key=TEST_KEY, latency=0.5) as emu:
        transport = Transport(max_connections=1, max_response_bytes=1 << 24, user_agent="t")
        loop = asyncio.get_running_loop()
        stamps: list[float] = []

        async def one() -> None:
            await transport.request(
                "POST", emu.base_url + "/images/generations",
                headers={"Authorization": f"Bearer {TEST_KEY}"},
                body=Body(b'{"prompt": "p", "model": "dall-e-2", "size": "256x256"}',
                          "application/json"),
                timeout=5.0,
                on_wire=lambda: stamps.append(loop.time()),
            )

        started = loop.time()
        try:
            await asyncio.gather(one(), one())
        finally:
            await transport.aclose()
    first, second = sorted(stamps)
    assert first - started < 0.45  # not after the first answer
    assert second - started >= 0.5


def noise_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGBA PNG of random pixels (it does not compress: ~4 side^2 bytes)."""
    rng = random.Random(side)
    return encode_png(side, side, [rng.randbytes(side * 4) for _ in range(side)], alpha=True)


async def test_an_upload_is_stamped_when_its_body_is_handed_over_not_at_the_answer() -> None:
    """A 3 MB edit: stamped once, after the body went out and before the answer."""
    png = noise_png(880)
    assert 3_000_000 < len(png) < 4 * 1024 * 1024
    async with Emulator(api_key=TEST_KEY, latency=0.3) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(10, 60.0),
    ) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.edit(png, "a flamingo", model="dall-e-2", n=2,
                                     size="256x256")
        answered = loop.time() - started
        stats = client.limiter.stats()
        (entry,) = emu.requests("/v1/images/edits")
        (arrival, images), = emu.arrivals
    assert len(response.data) == 2
    assert stats.sent == 2
    assert stats.refunded == 0
    assert answered >= 0.3
    # The gate measured the server's answer time from the stamp: the upload was before it.
    assert 0.3 <= client._gate.latency() < answered
    assert images == 2
    assert arrival >= entry.time


def test_the_wire_signal_counts_the_body_by_its_length() -> None:
    fired: list[int] = []
    wire = _Wire(lambda: fired.append(1))
    wire.headers_sent({"Content-Length": "100"})
    assert wire.started
    assert not fired
    wire.chunk_sent(60)
    assert not fired
    wire.chunk_sent(40)
    assert fired == [1]
    wire.chunk_sent(10)
    wire.fire()
    assert fired == [1]


@pytest.mark.parametrize(("headers", "fires"), [({"Content-Length": "0"}, True), ({}, False)])
def test_the_wire_signal_without_a_body_or_a_length(
    headers: dict[str, str], fires: bool
) -> None:
    fired: list[int] = []
    wire = _Wire(lambda: fired.append(1))
    wire.headers_sent(headers)
    wire.chunk_sent(1000)
    assert fired == ([1] if fires else [])
    wire.fire()  # the transport's fallback: the answer began
    assert fired == [1]


async def test_an_answer_is_received_when_its_headers_arrive_not_its_body() -> None:
    """The limiter dates the server's count from the headers' arrival: a body read slowly
    (or a loop busy with other answers) must not make the count look later."""
    async with Emulator(api_key=TEST_KEY) as emu:
        emu.add_fault(Fault.trickle(0.05, chunks=4))
        transport = Transport(max_connections=1, max_response_bytes=1 << 24, user_agent="t")
        try:
            raw = await transport.request(
                "POST", emu.base_url + "/images/generations",
                headers={"Authorization": f"Bearer {TEST_KEY}"},
                body=Body(b'{"prompt": "p", "model": "dall-e-2", "size": "256x256"}',
                          "application/json"),
                timeout=5.0,
            )
            done = asyncio.get_running_loop().time()
        finally:
            await transport.aclose()
    assert raw.status == 200
    assert done - raw.received >= 0.15  # three of the four waits came after the headers
