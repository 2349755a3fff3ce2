"""Run by tests/test_redis_processes.py: one process of a fleet sharing a RedisLimiter.

Usage: python shared_limit_worker.py BASE_URL REDIS_URL NAME REQUESTS CONCURRENCY LEASE
       [--retries N] [--again-on-unavailable]

Prints ``ready`` once connected, waits for a line on stdin, sends REQUESTS
requests of one image each (at most CONCURRENCY at once), then prints one JSON
line: ``{"ok": ..., "errors": {class name: count}}``. With ``--again-on-unavailable``
a request that met LimiterUnavailableError is tried again after 0.1 s, as an
application would.
"""

import asyncio
import collections
import gc
import json
import sys

from asyncimg import AsyncImagesClient, LimiterUnavailableError, RateLimit, RedisLimiter


async def main() -> None:
    base_url, redis_url, name = sys.argv[1:4]
    requests, concurrency, lease = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    flags = sys.argv[7:]
    retries = int(flags[flags.index("--retries") + 1]) if "--retries" in flags else 0
    again = "--again-on-unavailable" in flags
    limiter = RedisLimiter.from_url(
        redis_url, rate=RateLimit(20, 2.0, margin=0.1), name=name, lease=lease, timeout=0.5
    )
    errors: collections.Counter[str] = collections.Counter()
    ok = 0
    async with AsyncImagesClient(
        api_key="sk-fleet", base_url=base_url, limiter=limiter, max_retries=retries,
        max_concurrency=concurrency,
    ) as client:
        # Connected once Redis answers: on a loaded machine the first answer (a new
        # connection, the script loaded) can take longer than the limiter's timeout.
        for _ in range(40):
            try:
                await limiter.fetch_stats()
                break
            except LimiterUnavailableError:
                await asyncio.sleep(0.25)
        # A full garbage collection (tens of ms on a loaded machine) inside the short run
        # would be measured as the limiter's slack: collect and freeze what exists now.
        gc.collect()
        gc.freeze()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one(i: int) -> None:
            nonlocal ok
            while True:
                try:
                    await client.generate(f"p{i}", model="dall-e-2", size="256x256")
                except LimiterUnavailableError:
                    errors["LimiterUnavailableError"] += 1
                    if again:
                        await asyncio.sleep(0.1)
                        continue
                except Exception as exc:
                    errors[type(exc).__name__] += 1
                else:
                    ok += 1
                return

        await asyncio.gather(*(one(i) for i in range(requests)))
    await limiter.aclose()
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)


asyncio.run(main())
