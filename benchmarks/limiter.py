"""Benchmark the image rate limiter.

    .venv/bin/python benchmarks/limiter.py            # all three parts
    .venv/bin/python benchmarks/limiter.py --no-emulator

1. Against the emulator enforcing its own limit (a scaled window, 20 images per
   2 s by default): 100 calls of mixed n submitted at once through
   AsyncImagesClient. Measured on the emulator's side: the most images in any
   window (goal: <= the limit), the achieved rate in steady state as a fraction of
   the allowed one (goal >= 0.98), and the 429s (goal 0). Takes about 25 s.
2. The same traffic simulated on a FakeClock against a fake server that records
   arrival times (instant; no sockets).
3. The cost of one acquire with 1,000 waiters queued (goal <= 20 microseconds),
   plus the fast path and the cost of serving a queued waiter.

Nothing here touches any network but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import statistics
import sys
import time
from collections.abc import Sequence

from asyncimg._limiter import Limiter, Permit, RateLimit
from asyncimg.testing import FakeClock


def max_in_window(arrivals: Sequence[tuple[float, int]], per: float) -> int:
    """The most images in any half-open window [t, t + per)."""
    items = sorted(arrivals)
    worst = 0
    j = 0
    total = 0
    for i, (start, _) in enumerate(items):
        while j < len(items) and items[j][0] < start + per:
            total += items[j][1]
            j += 1
        worst = max(worst, total)
        total -= items[i][1]
    return worst


def steady_fraction(arrivals: Sequence[tuple[float, int]], images: int, per: float) -> float:
    """The mean fill of a sliding window over the run, as a fraction of the limit.

    The window ``[t, t + per)`` is slid over every start t from the first arrival
    to ``per`` before the last (sampled on a grid of per / 1000), and the images it
    holds are averaged. A limiter that sends a full budget every ``per + margin``
    scores ``per / (per + margin)`` (0.990 with the default margin).
    """
    items = sorted(arrivals)
    times = [t for t, _ in items]
    prefix = [0]
    for _, n in items:
        prefix.append(prefix[-1] + n)
    first, stop = times[0], times[-1] - per
    if stop <= first:
        return float("nan")
    steps = max(1, int((stop - first) / (per / 1000)))
    total = 0
    for k in range(steps + 1):
        t = first + (stop - first) * k / steps
        total += prefix[bisect.bisect_left(times, t + per)] - prefix[bisect.bisect_left(times, t)]
    return total / (steps + 1) / images


CHOICES = [1, 1, 2, 2, 3, 4]


def mixed_ns(calls: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice(CHOICES) for _ in range(calls)]


# -- 1. the emulator --------------------------------------------------------------------


async def bench_emulator(calls: int, images: int, per: float, seed: int) -> None:
    from asyncimg import AsyncImagesClient
    from asyncimg.testing import Emulator

    rate = RateLimit(images, per)
    ns = mixed_ns(calls, seed)
    async with (
        Emulator(images_per_minute=rate, latency=0.05) as emu,
        AsyncImagesClient(
            api_key="sk-bench", base_url=emu.base_url, rate_limit=rate, max_concurrency=16
        ) as client,
    ):
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                client.generate(
                    f"benchmark prompt {i}", model="dall-e-2", n=n, size="256x256",
                    response_format="b64_json",
                )
                for i, n in enumerate(ns)
            ),
            return_exceptions=True,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        failures = [r for r in results if isinstance(r, BaseException)]
        arrivals = list(emu.arrivals)
        refused = len(emu.requests(status=429))
        stats = client.limiter.stats()
    print(f"1. emulator: {calls} calls, {sum(ns)} images, limit {images} per {per:g} s")
    print(f"   wall time                      {elapsed:.2f} s, failed calls {len(failures)}")
    worst = max_in_window(arrivals, per)
    print(f"   most images in any window      {worst} (goal <= {images})")
    frac = steady_fraction(arrivals, images, per)
    print(f"   steady-state rate / allowed    {frac:.3f} (goal >= 0.98)")
    print(f"   429s                           {refused} (goal 0)")
    print(f"   limiter stats                  granted={stats.granted} sent={stats.sent} "
          f"pauses={stats.pauses}")  # fmt: skip
    for failure in failures[:3]:
        print(f"   failure: {failure!r}")


# -- 2. the simulation ------------------------------------------------------------------


async def bench_simulation(calls: int, images: int, per: float, seed: int) -> None:
    rate = RateLimit(images, per)
    clock = FakeClock()
    limiter = Limiter(rate, clock=clock)
    rng = random.Random(seed)
    ns = mixed_ns(calls, seed)
    arrivals: list[tuple[float, int]] = []
    window: list[tuple[float, int]] = []  # the fake server's own sliding window
    refused = 0

    def arrive(n: int) -> None:
        nonlocal refused
        now = clock.now()
        window[:] = [(t, m) for t, m in window if t > now - per]
        if sum(m for _, m in window) + n > images:
            refused += 1
            return
        window.append((now, n))
        arrivals.append((now, n))

    async def call(n: int) -> None:
        permit = await limiter.acquire(n)
        permit.stamp()
        # The request reaches the server within the margin.
        await clock.sleep_until(clock.now() + rng.uniform(0.0, 0.9 * rate.margin))
        arrive(n)
        await clock.sleep_until(clock.now() + rng.uniform(0.2, 1.0))  # the server works

    tasks = [asyncio.ensure_future(call(n)) for n in ns]
    while not all(t.done() for t in tasks):
        for _ in range(10):
            await asyncio.sleep(0)
        deadline = clock.next_deadline
        if deadline is not None:
            clock.advance_to(deadline)
    print(f"2. simulation (FakeClock): {calls} calls, {sum(ns)} images, "
          f"limit {images} per {per:g} s, arrival <= 0.9 * margin after the stamp")  # fmt: skip
    print(f"   most images in any window      {max_in_window(arrivals, per)} (goal <= {images})")
    frac = steady_fraction(arrivals, images, per)
    print(f"   steady-state rate / allowed    {frac:.3f} (goal >= 0.98)")
    print(f"   429s                           {refused} (goal 0)")
    print(f"   simulated time                 {clock.now():.2f} s")


# -- 3. the cost of acquire -------------------------------------------------------------


async def bench_acquire(waiters: int, samples: int) -> None:
    limiter = Limiter(RateLimit(10**9, 60.0))
    fast: list[float] = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(samples):
            await limiter.acquire(1)
        fast.append((time.perf_counter() - t0) / samples)

    # A budget of 1, taken: everyone else queues.
    limiter = Limiter(RateLimit(1, 60.0))
    blocker = await limiter.acquire(1)
    queued = [asyncio.ensure_future(limiter.acquire(1)) for _ in range(waiters)]
    await asyncio.sleep(0)
    assert limiter.stats().waiting == waiters
    # Time acquire itself: step the coroutine until it parks on its future.
    costs: list[float] = []
    extra = []
    for _ in range(5):
        coros = [limiter.acquire(1) for _ in range(samples)]
        t0 = time.perf_counter()
        for coro in coros:
            coro.send(None)  # runs acquire up to its await: the whole queuing cost
        costs.append((time.perf_counter() - t0) / samples)
        extra.extend(coros)
    for coro in extra:
        coro.close()  # cancels the waiter: takes nothing
    # Serving: each refund grants the head waiter.
    permits: list[Permit] = []
    t0 = time.perf_counter()
    blocker.refund()
    for task in queued:
        permit = await task
        permit.refund()
        permits.append(permit)
    serve = (time.perf_counter() - t0) / waiters
    print(f"3. acquire cost ({samples} calls x 5 rounds, best round)")
    print(f"   fast path, nobody waiting      {min(fast) * 1e6:.2f} us")
    print(f"   with {waiters} waiters queued     {min(costs) * 1e6:.2f} us "
          f"(median {statistics.median(costs) * 1e6:.2f} us; goal <= 20 us)")  # fmt: skip
    print(f"   refund -> next waiter resumes  {serve * 1e6:.2f} us per waiter")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--per", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--n", default="1,1,2,2,3,4", help="the n to draw from, e.g. 1")
    parser.add_argument("--no-emulator", action="store_true", help="skip part 1")
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.per, args.waiters = 12, 0.5, 50
    CHOICES[:] = [int(x) for x in args.n.split(",")]
    if not args.no_emulator:
        asyncio.run(bench_emulator(args.calls, args.images, args.per, args.seed))
    asyncio.run(bench_simulation(args.calls, args.images, args.per, args.seed))
    asyncio.run(bench_acquire(args.waiters, 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
