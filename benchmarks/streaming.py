"""Streamed generations: client CPU and peak memory, asyncimg against the official SDK.

    .venv/bin/python benchmarks/streaming.py [--streams 20] [--partials 3] [--rounds 3]

A server in its own process answers every ``stream: true`` generation with
``partials`` partial-image events and one completed event, each carrying a
realistic 1024x1024 PNG (about 1.1 MB, 1.5 MB of base64, as in
``benchmarks/_server.py``), written in 64 KiB pieces. Each client runs in a fresh
process, consumes ``streams`` streams one after the other (keeping nothing: the
consumer only reads each event's ``type`` and the length of its base64), and
reports its CPU time (user + system) per stream, the time to the first event,
and its peak RSS (ru_maxrss). Clients: asyncimg, and ``openai.AsyncOpenAI``
(httpx2) with ``images.generate(stream=True)``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_PIECE = 64 * 1024


def _serve(port: int, partials: int) -> None:
    sys.path.insert(0, str(HERE))
    from _server import TARGET_PNG_BYTES, make_png
    from aiohttp import web

    b64 = base64.b64encode(make_png(1024, TARGET_PNG_BYTES[1024])).decode("ascii")
    common = {"created_at": 1, "size": "1024x1024", "quality": "high",
              "background": "opaque", "output_format": "png"}
    events = [
        {"type": "image_generation.partial_image", "b64_json": b64, **common,
         "partial_image_index": i}
        for i in range(partials)
    ] + [{"type": "image_generation.completed", "b64_json": b64, **common,
          "usage": {"input_tokens": 5, "output_tokens": 4160, "total_tokens": 4165}}]
    wire = b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "x-request-id": "req_bench"})
        await response.prepare(request)
        for start in range(0, len(wire), _PIECE):
            await response.write(wire[start : start + _PIECE])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/images/generations", handler)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


async def _consume_asyncimg(base_url: str, streams: int) -> list[float]:
    from asyncimg import AsyncImagesClient

    firsts = []
    async with AsyncImagesClient(api_key="sk-bench", base_url=base_url, rate_limit=None) as c:
        for _ in range(streams):
            started = time.perf_counter()
            stream = await c.generate("a lantern", model="gpt-image-1", stream=True)
            firsts.append(time.perf_counter() - started)
            async with stream:
                async for event in stream:
                    assert len(event.b64_json or "") > 0, event.type
    return firsts


async def _consume_openai(base_url: str, streams: int) -> list[float]:
    import openai

    firsts = []
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0) as c:
        for _ in range(streams):
            started = time.perf_counter()
            stream = await c.images.generate(prompt="a lantern", model="gpt-image-1",
                                             stream=True)
            first = True
            async for event in stream:
                if first:
                    firsts.append(time.perf_counter() - started)
                    first = False
                assert len(event.b64_json or "") > 0, event.type
    return firsts


def _client(which: str, base_url: str, streams: int) -> None:
    consume = _consume_asyncimg if which == "asyncimg" else _consume_openai
    before = resource.getrusage(resource.RUSAGE_SELF)
    firsts = asyncio.run(consume(base_url, streams))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({
        "cpu_ms": cpu / streams * 1000,
        "first_ms": statistics.median(firsts) * 1000,
        "rss_mb": after.ru_maxrss / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--partials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.streams, args.partials, args.rounds = 2, 1, 1
    if args.serve is not None:
        _serve(args.serve, args.partials)
        return
    if args.client:
        _client(args.client, args.base_url, args.streams)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--partials", str(args.partials)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        base_url = f"http://127.0.0.1:{port}/v1"
        results: dict[str, list[dict[str, float]]] = {"asyncimg": [], "openai": []}
        for _ in range(args.rounds):
            for which in results:
                out = subprocess.run(
                    [sys.executable, __file__, "--client", which, "--base-url", base_url,
                     "--streams", str(args.streams)],
                    capture_output=True, text=True, check=True,
                )
                results[which].append(json.loads(out.stdout))
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    print(f"{args.streams} streams of {args.partials} partials + 1 final, 1024x1024 "
          f"(1.5 MB of base64 per event); medians of {args.rounds} rounds")
    print(f"{'client':<10} {'CPU ms/stream':>14} {'first event ms':>15} {'peak RSS MB':>12}")
    for which, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{which:<10} {med['cpu_ms']:>14.1f} {med['first_ms']:>15.1f} "
              f"{med['rss_mb']:>12.1f}")


if __name__ == "__main__":
    main()
