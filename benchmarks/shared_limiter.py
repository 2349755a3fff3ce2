"""One image budget shared by several processes: RedisLimiter against the alternatives.

    .venv/bin/python benchmarks/shared_limiter.py              # about 2 minutes
    .venv/bin/python benchmarks/shared_limiter.py --requests 10   # a smoke run

Part 1, the fleet: P processes (4) x concurrency (8) send one-image requests through
AsyncImagesClient to the emulator, which runs in its own process and enforces the
same limit (20 images per 2 s) with 429s. Three ways to limit the fleet:

- ``redis``: asyncimg's RedisLimiter, one shared budget of 20 per 2 s;
- ``local rate/P``: each process its own Limiter at 5 per 2 s (the naive fix);
- ``limits``: the ``limits`` library's moving window on the same Redis (``hit``;
  when refused, sleep until ``get_window_stats`` says a slot frees), 20 per 2 s.

1a spreads the load evenly; 1b puts it all on one process, where a fixed share
per process (rate/P) leaves most of the budget unused. Measured at the clients:
the fullest window of send stamps (every process stamps on one clock, the
machine's monotonic one); at the server: the fullest window of arrivals as the
emulator saw them, utilisation (images accepted over what the limit allows from the
first arrival to the last + per), 429s. In the workers: Redis round trips per
image, and acquire's wait (p50/p99).

Part 2, 1,000 waiters: 4 processes x 250 waiters queue on one budget of 20 per 2 s
for two windows (no HTTP), then leave; the latency of each Redis call meanwhile
(the enqueue, the take that grants, the settlement of stamps and refunds) for
RedisLimiter, and of ``hit`` for ``limits`` with 1,000 callers retrying.

Part 3, the fast path: 500 acquires one after the other with room to spare, each
stamped: what a call costs when nothing waits (local, RedisLimiter, limits).

Starts its own redis-server (from PATH) on a free port. Nothing here talks to any
address but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._redis_server import RedisServer  # noqa: E402  (the tests' redis-server runner)

LIMIT, PER, PROCS, CONCURRENCY = 20, 2.0, 4, 8


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the limiters under test ------------------------------------------------------------


class Timed:
    """Wraps a limiter; records how long each acquire waited, and when each permit
    was stamped (``time.monotonic()``, one clock for every process of the machine)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.waits: list[float] = []
        self.stamps: list[float] = []

    async def acquire(self, images: int) -> Any:
        started = time.perf_counter()
        permit = await self.inner.acquire(images)
        self.waits.append(time.perf_counter() - started)
        return _Stamped(permit, self.stamps)

    def pause(self, seconds: float) -> None:
        self.inner.pause(seconds)

    def observe_headers(self, headers: Any) -> None:
        self.inner.observe_headers(headers)

    def stats(self) -> Any:
        return self.inner.stats()


class _Stamped:
    def __init__(self, permit: Any, stamps: list[float]) -> None:
        self.permit = permit
        self.images = permit.images
        self.stamps = stamps

    def stamp(self) -> None:
        self.stamps.append(time.monotonic())
        self.permit.stamp()

    def refund(self) -> None:
        self.permit.refund()


def fullest(times: list[float], per: float) -> int:
    """The most stamps in any half-open window [t, t + per)."""
    times = sorted(times)
    best = j = 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + per:
            j += 1
        best = max(best, j - i)
    return best


class _NoPermit:
    def __init__(self, images: int) -> None:
        self.images = images

    def stamp(self) -> None:
        pass

    def refund(self) -> None:  # limits counts at hit time and has no refunds
        pass


class LimitsLimiter:
    """The ``limits`` moving window as the usual dependency is used: hit, else wait."""

    def __init__(self, url: str, name: str) -> None:
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self.storage = RedisStorage("async+" + url, implementation="redispy")
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.item = RateLimitItemPerSecond(LIMIT, int(PER))
        self.name = name
        self.round_trips = 0
        self.hit_latency: list[float] = []

    async def acquire(self, images: int) -> _NoPermit:
        while True:
            started = time.perf_counter()
            ok = await self.strategy.hit(self.item, self.name, cost=images)
            self.hit_latency.append(time.perf_counter() - started)
            self.round_trips += 1
            if ok:
                return _NoPermit(images)
            window = await self.strategy.get_window_stats(self.item, self.name)
            self.round_trips += 1
            await asyncio.sleep(max(0.005, window.reset_time - time.time()))

    def pause(self, seconds: float) -> None:
        pass

    def observe_headers(self, headers: Any) -> None:
        pass

    def stats(self) -> Any:
        return None


def make_limiter(cfg: dict[str, Any]) -> Any:
    from asyncimg import Limiter, RateLimit, RedisLimiter

    kind = cfg["kind"]
    if kind == "redis":
        return RedisLimiter.from_url(cfg["redis"], rate=RateLimit(LIMIT, PER), name=cfg["name"])
    if kind == "local":
        return Limiter(RateLimit(LIMIT // PROCS, PER))
    return LimitsLimiter(cfg["redis"], cfg["name"])


# -- the processes ----------------------------------------------------------------------


async def serve_emulator(latency: float) -> None:
    """The emulator's process: prints its url, then its arrivals when stdin closes."""
    from asyncimg.testing import Emulator

    async with Emulator(images_per_minute=(LIMIT, PER), latency=latency) as emu:
        print(emu.base_url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        report = {
            "arrivals": emu.arrivals,
            "max_window": emu.max_images_in_window() if emu.arrivals else 0,
            "429": len(emu.requests(status=429)),
        }
        print(json.dumps(report), flush=True)


async def fleet_worker(cfg: dict[str, Any]) -> None:
    from asyncimg import AsyncImagesClient

    inner = make_limiter(cfg)
    limiter = Timed(inner)
    errors: collections.Counter[str] = collections.Counter()
    ok = 0
    async with AsyncImagesClient(
        api_key="sk-bench", base_url=cfg["base_url"], limiter=limiter, max_retries=0,
        max_concurrency=CONCURRENCY,
    ) as client:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one(i: int) -> None:
            nonlocal ok
            try:
                await client.generate(f"p{i}", model="dall-e-2", size="256x256")
                ok += 1
            except Exception as exc:
                errors[type(exc).__name__] += 1

        await asyncio.gather(*(one(i) for i in range(cfg["requests"])))
    trips = getattr(inner, "round_trips", 0)
    if hasattr(inner, "aclose"):
        await inner.aclose()
    print(json.dumps({"ok": ok, "errors": errors, "round_trips": trips,
                      "waits": limiter.waits, "stamps": limiter.stamps}), flush=True)


async def waiters_worker(cfg: dict[str, Any]) -> None:
    """Waiters on one shared budget for a few seconds; each grant is stamped (no HTTP)."""
    inner = make_limiter(cfg)
    calls: dict[str, list[float]] = collections.defaultdict(list)
    if cfg["kind"] == "redis":
        original = inner._call

        async def timed_call(op: str, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(op, *args)
            finally:
                calls[op].append(time.perf_counter() - started)

        inner._call = timed_call
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    granted = 0

    async def one() -> None:
        nonlocal granted
        permit = await inner.acquire(1)
        permit.stamp()
        granted += 1

    tasks = [asyncio.ensure_future(one()) for _ in range(cfg["waiters"])]
    await asyncio.sleep(cfg["seconds"])  # two windows' worth of grants, then everyone leaves
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if cfg["kind"] == "limits":
        calls["hit"] = inner.hit_latency
    if hasattr(inner, "aclose"):
        await inner.aclose()
    print(json.dumps({"calls": calls, "granted": granted}), flush=True)


def spawn(mode: str, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, mode, json.dumps(cfg)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )


def run_group(mode: str, cfgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    procs = [spawn(mode, cfg) for cfg in cfgs]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


# -- the parts --------------------------------------------------------------------------


def part_fleet(redis: RedisServer, requests: list[int], latency: float) -> list[dict[str, Any]]:
    """One run per limiter; ``requests[i]`` is what process i sends."""
    rows = []
    kinds = (("redis", "asyncimg RedisLimiter"), ("local", f"local Limiter, rate/{PROCS}"),
             ("limits", "limits moving window"))
    for kind, label in kinds:
        emu = spawn("--serve", {"latency": latency})
        assert emu.stdout is not None
        assert emu.stdin is not None
        base_url = emu.stdout.readline().strip()
        name = f"bench-{kind}-{os.getpid()}-{time.monotonic_ns()}"
        cfg = {"kind": kind, "redis": redis.url, "name": name, "base_url": base_url}
        started = time.monotonic()
        reports = run_group("--worker", [cfg | {"requests": n} for n in requests])
        elapsed = time.monotonic() - started
        emu.stdin.close()
        server = json.loads(emu.stdout.read().strip().splitlines()[-1])
        emu.wait()
        times = [t for t, _n in server["arrivals"]]
        images = sum(n for _t, n in server["arrivals"])
        util = images / (LIMIT * (max(times) - min(times) + PER) / PER) if times else 0.0
        waits = [w for r in reports for w in r["waits"]]
        stamps = [t for r in reports for t in r["stamps"]]
        ok = sum(r["ok"] for r in reports)
        trips = sum(r["round_trips"] for r in reports)
        errors: collections.Counter[str] = collections.Counter()
        for r in reports:
            errors.update(r["errors"])
        rows.append({
            "label": label, "max_window": server["max_window"], "util": util,
            "max_stamped": fullest(stamps, PER),
            "429": server["429"], "ok": ok, "errors": dict(errors),
            "trips_per_image": trips / ok if ok else float("nan"),
            "wait_p50": pct(waits, 0.5), "wait_p99": pct(waits, 0.99), "elapsed": elapsed,
        })
    return rows


def part_waiters(redis: RedisServer, waiters: int) -> list[dict[str, Any]]:
    rows = []
    for kind, label in (("redis", "asyncimg RedisLimiter"), ("limits", "limits moving window")):
        name = f"bench-wait-{kind}-{os.getpid()}-{time.monotonic_ns()}"
        cfg = {"kind": kind, "redis": redis.url, "name": name, "waiters": waiters // PROCS,
               "seconds": 2 * PER + 0.5}
        reports = run_group("--waiters", [cfg] * PROCS)
        calls: dict[str, list[float]] = collections.defaultdict(list)
        for r in reports:
            for op, values in r["calls"].items():
                calls[op].extend(values)
        for op in ("acquire", "take", "settle", "hit"):
            if calls.get(op):
                rows.append({"label": label, "op": op, "n": len(calls[op]),
                             "p50": pct(calls[op], 0.5), "p99": pct(calls[op], 0.99)})
    return rows


async def part_fast_path(redis: RedisServer, calls: int = 500) -> list[dict[str, Any]]:
    """One acquire at a time with room and nobody waiting: what each call costs."""
    from asyncimg import Limiter, RateLimit, RedisLimiter

    rows = []
    name = f"bench-fast-{os.getpid()}-{time.monotonic_ns()}"
    kinds: list[tuple[str, Any]] = [
        ("local Limiter", Limiter(RateLimit(10**6, PER))),
        ("asyncimg RedisLimiter",
         RedisLimiter.from_url(redis.url, rate=RateLimit(10**6, PER), name=name)),
        ("limits moving window", LimitsLimiter(redis.url, name + "-limits")),
    ]
    for label, lim in kinds:
        if isinstance(lim, LimitsLimiter):
            lim.item = type(lim.item)(10**6, int(PER))
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            permit = await lim.acquire(1)
            took.append(time.perf_counter() - started)
            permit.stamp()
            await asyncio.sleep(0)  # let a stamp go out, as between real requests
        if hasattr(lim, "aclose"):
            await lim.aclose()
        rows.append({"label": label, "p50": pct(took, 0.5), "p99": pct(took, 0.99)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="requests per process")
    parser.add_argument("--waiters", type=int, default=1000, help="waiters in part 2")
    parser.add_argument("--latency", type=float, default=0.05, help="the emulator's latency")
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.waiters = 3, 20
    redis = RedisServer(os.environ.get("REDIS_SERVER", "redis-server"))
    redis.start()
    uneven = [args.requests * PROCS // 3, 0, 0, 0]
    try:
        even = part_fleet(redis, [args.requests] * PROCS, args.latency)
        busy = part_fleet(redis, uneven, args.latency)
        waiting = part_waiters(redis, args.waiters)
        fast = asyncio.run(part_fast_path(redis))
    finally:
        redis.kill()
    for title, rows in (
        (f"Part 1a: {PROCS} processes x concurrency {CONCURRENCY}, {args.requests} one-image "
         f"requests each", even),
        (f"Part 1b: uneven load, one process sends {uneven[0]}, the other three nothing", busy),
    ):
        print(f"{title}; emulator limit {LIMIT}/{PER:g}s (latency {args.latency:g}s)\n")
        print("| limiter | fullest window: stamps / at the server | utilisation | 429s | "
              "done | Redis round trips / image | acquire wait p50 / p99 | run |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['label']} | {r['max_stamped']} / {r['max_window']} (limit {LIMIT}) | "
                  f"{r['util']:.1%} | "
                  f"{r['429']} | {r['ok']} | {r['trips_per_image']:.2f} | "
                  f"{r['wait_p50'] * 1000:.0f} / {r['wait_p99'] * 1000:.0f} ms | "
                  f"{r['elapsed']:.1f} s |")
        print()
    print(f"Part 2: {args.waiters} waiters over {PROCS} processes, one budget of "
          f"{LIMIT}/{PER:g}s; latency of each Redis call while they wait\n")
    print("| limiter | call | calls | p50 | p99 |")
    print("|---|---|---|---|---|")
    for r in waiting:
        print(f"| {r['label']} | {r['op']} | {r['n']} | {r['p50'] * 1000:.2f} ms | "
              f"{r['p99'] * 1000:.2f} ms |")
    print("\nPart 3: one acquire at a time, with room and nobody waiting (500 calls)\n")
    print("| limiter | acquire p50 | p99 |")
    print("|---|---|---|")
    for r in fast:
        print(f"| {r['label']} | {r['p50'] * 1e6:.0f} µs | {r['p99'] * 1e6:.0f} µs |")
    version = subprocess.run([redis.binary, "--version"], capture_output=True, text=True)
    print(f"\n{version.stdout.split()[2]} (redis-server), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--serve", "--worker", "--waiters"):
        config = json.loads(sys.argv[2])
        runner = {"--serve": lambda: serve_emulator(config["latency"]),
                  "--worker": lambda: fleet_worker(config),
                  "--waiters": lambda: waiters_worker(config)}[sys.argv[1]]
        asyncio.run(runner())
    else:
        main()
