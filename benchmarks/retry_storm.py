"""A retry storm: 64 callers at once against a server that takes 8 requests per 0.5 s.

    .venv/bin/python benchmarks/retry_storm.py [--rounds 3] [--callers 64]

The server (aiohttp.web on 127.0.0.1, in this process) refuses every request
over its sliding window with no Retry-After, as an overloaded server or a proxy
does, so the client's own backoff decides when each caller tries again: once
with 429 (the client pauses all its callers for the wait, one shared cool-down)
and once with 503 (each caller sleeps its own wait). One AsyncImagesClient (no
local rate limit) sends one generation per caller, retrying up to 30 times, with the
backoff scaled down 5x (0.1 s doubling to 1.6 s) so that a round takes seconds.
Compared: full jitter (a wait anywhere in 0..100 % of the step), a 10 % floor
(10..100 %, asyncimg's default), and the floored jitter the official SDK uses
(75..100 %). Reported per policy: requests sent (each refusal is a request the
server had to turn away), the time until the last caller is done, and the
median caller's time. The ideal is 64 requests in
(64 / 8 - 1) x 0.5 = 3.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time

import attrs
from aiohttp import web

from asyncimg import AsyncImagesClient
from asyncimg._retry import RetryPolicy

PER = 0.5
CAPACITY = 8


async def run_server(status: int) -> tuple[web.AppRunner, str, dict[str, int]]:
    """The overloaded server: CAPACITY requests per PER seconds, ``status`` for the rest."""
    window: collections.deque[float] = collections.deque()
    counts = {"requests": 0, "refused": 0}

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        counts["requests"] += 1
        while window and window[0] <= now - PER:
            window.popleft()
        if len(window) >= CAPACITY:
            counts["refused"] += 1
            return web.json_response(
                {"error": {"message": "busy", "type": "requests", "param": None,
                           "code": "rate_limit_exceeded"}},
                status=status,
            )
        window.append(now)
        return web.json_response({"created": 1, "data": [{"url": "http://127.0.0.1/x.png"}]})

    app = web.Application()
    app.router.add_post("/v1/images/generations", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1", counts


async def storm(callers: int, jitter: float, status: int) -> dict[str, float]:
    runner, base_url, counts = await run_server(status)
    try:
        async with AsyncImagesClient(api_key="sk-bench", base_url=base_url, rate_limit=None,
                                     max_concurrency=callers, max_retries=30) as client:
            client.retry_policy = attrs.evolve(
                RetryPolicy(max_retries=30, initial=0.1, maximum=1.6), jitter=jitter
            )
            started = time.monotonic()

            async def one(i: int) -> float:
                await client.generate(f"caller {i}")
                return time.monotonic() - started

            done = await asyncio.gather(*[one(i) for i in range(callers)])
    finally:
        await runner.cleanup()
    return {
        "requests": counts["requests"],
        "refused": counts["refused"],
        "last": max(done),
        "median": statistics.median(done),
    }


async def main(args: argparse.Namespace) -> None:
    policies = {
        "full jitter (0-100 %)": 1.0,
        "floor 10 % (10-100 %)": 0.9,
        "floored jitter (75-100 %)": 0.25,
    }
    results: dict[tuple[int, str], list[dict[str, float]]] = {
        (status, name): [] for status in (429, 503) for name in policies
    }
    for _ in range(args.rounds):
        for status, name in results:
            results[status, name].append(await storm(args.callers, policies[name], status))
    ideal = (args.callers / CAPACITY - 1) * PER
    print(f"{args.callers} callers, server {CAPACITY} per {PER} s (ideal: {args.callers} "
          f"requests, {ideal:.1f} s); medians of {args.rounds} rounds, [min-max]")
    print("| refused with | jitter | requests | of them refused | last caller done (s) "
          "| median caller (s) |")
    print("|---|---|---|---|---|---|")
    for (status, name), runs in results.items():
        def cell(key: str, fmt: str, runs: list[dict[str, float]] = runs) -> str:
            values = [r[key] for r in runs]
            return (f"{statistics.median(values):{fmt}} "
                    f"[{min(values):{fmt}}-{max(values):{fmt}}]")
        print(f"| {status} | {name} | {cell('requests', '.0f')} | {cell('refused', '.0f')} | "
              f"{cell('last', '.2f')} | {cell('median', '.2f')} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.callers = 1, 8
    asyncio.run(main(arguments))
