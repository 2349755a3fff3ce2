"""Event-loop lag while 16 large responses arrive: decoding on the loop vs off it.

    .venv/bin/python benchmarks/loop_lag.py [--rounds 3] [--mb 8] [--calls 16]

A server in a child process (127.0.0.1 only) answers every generation with one
``b64_json`` image of ``--mb`` MB of base64. The client sends ``--calls`` calls
at once and decodes each image (``client.download``), while a ticker task on
the same loop asks to wake every millisecond and records how late it wakes: the
lag every other task of the application (a web server's requests, a progress
bar) would see. "on the loop" sets the off-loop threshold to infinity, which is
how asyncimg worked before; "off the loop" is the default (bodies and base64
texts over ``OFF_LOOP_BYTES`` are decoded in a worker thread).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import statistics
import subprocess
import sys
import time

from aiohttp import web

import asyncimg._client
from asyncimg import AsyncImagesClient
from asyncimg._offloop import OFF_LOOP_BYTES


def serve(port: int, megabytes: float) -> None:
    """Answer every POST with one image of ``megabytes`` MB of base64 (runs in the child)."""
    raw = os.urandom(int(megabytes * 1024 * 1024 * 3 / 4))
    body = json.dumps(
        {"created": 1, "data": [{"b64_json": base64.b64encode(raw).decode()}]}
    ).encode()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/images/generations", answer)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def measure(base_url: str, calls: int, off_loop: bool) -> dict[str, float]:
    """Run ``calls`` generations at once; the ticker's lag in milliseconds and the wall time."""
    threshold = OFF_LOOP_BYTES if off_loop else math.inf
    asyncimg._client.OFF_LOOP_BYTES = threshold  # type: ignore[assignment]
    lags: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - start - 0.001) * 1000)

    async with AsyncImagesClient(api_key="sk-bench", base_url=base_url, rate_limit=None,
                                 max_concurrency=calls) as client:
        client._transport._off_loop_bytes = threshold
        await client.generate("warm up")
        tick = asyncio.create_task(ticker())
        started = time.perf_counter()

        async def one(i: int) -> int:
            response = await client.generate(f"image {i}")
            return len(await client.download(response.data[0]))

        sizes = await asyncio.gather(*[one(i) for i in range(calls)])
        wall = time.perf_counter() - started
        running = False
        await tick
    assert all(sizes)
    lags.sort()
    return {
        "p50": statistics.median(lags),
        "p99": lags[int(len(lags) * 0.99)],
        "max": lags[-1],
        "wall": wall,
    }


async def main(args: argparse.Namespace) -> None:
    port = 8950
    child = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measuring
        [sys.executable, __file__, "--serve", str(port), "--mb", str(args.mb)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        await asyncio.sleep(0.3)
        base_url = f"http://127.0.0.1:{port}/v1"
        results: dict[str, list[dict[str, float]]] = {"on the loop": [], "off the loop": []}
        for _ in range(args.rounds):
            for name in results:
                results[name].append(await measure(base_url, args.calls, name == "off the loop"))
    finally:
        child.terminate()
        child.wait()
    print(f"{args.calls} calls at once, one {args.mb:g} MB base64 image each, decoded; "
          f"medians of {args.rounds} rounds (ms; wall in s)")
    print("| decoding | lag p50 | lag p99 | lag max | wall |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {med['p50']:.2f} | {med['p99']:.1f} | {med['max']:.1f} | "
              f"{med['wall']:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.mb, arguments.calls = 1, 1.0, 4
    if arguments.serve is not None:
        serve(arguments.serve, arguments.mb)
    else:
        asyncio.run(main(arguments))
