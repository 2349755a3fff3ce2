"""One benchmark process: one library, one workload, figures on stdout as JSON.

    .venv/bin/python benchmarks/_worker.py --lib asyncimg --port 8931 \\
        --size 256x256 --concurrency 64 --calls 1000 [--cpu 1] \\
        [--profile cprofile|pyinstrument --profile-out FILE]

``--lib`` is ``asyncimg``, ``openai-httpx`` (``openai.AsyncOpenAI()``, its default
httpx client) or ``openai-aiohttp`` (``AsyncOpenAI(http_client=DefaultAioHttpClient())``).
Retries and asyncimg's rate limiter are off. The process first opens its
connections with one warm-up wave of ``concurrency`` calls, then measures
``calls`` generate calls kept ``concurrency`` in flight: the process CPU time
(user + system, :func:`time.process_time`) and the wall time around those calls
only. Peak RSS (``ru_maxrss``) is that of the whole process at the end.
``--profile`` records a profile of the measured calls only (pyinstrument must be
installed for ``pyinstrument``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PROMPT = "a white siamese cat sitting on a red cushion, studio light"
LIBS = ("asyncimg", "openai-httpx", "openai-aiohttp")

Call = Callable[[], Awaitable[Any]]


async def _drive(call: Call, calls: int, concurrency: int) -> None:
    """Make ``calls`` calls with ``concurrency`` of them in flight at once."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))


def _b64_of(result: Any) -> str:
    return result.data[0].b64_json or ""


async def _setup(lib: str, port: int, size: str, concurrency: int) -> tuple[Call, Any]:
    base_url = f"http://127.0.0.1:{port}/v1"
    if lib == "asyncimg":
        import asyncimg

        client: Any = asyncimg.AsyncImagesClient(
            api_key="sk-bench", base_url=base_url, rate_limit=None, max_retries=0,
            max_concurrency=concurrency,
        )
        await client.__aenter__()

        async def call() -> Any:
            return await client.generate(
                PROMPT, model="dall-e-2", n=1, size=size, response_format="b64_json"
            )

        return call, client
    import openai

    if lib == "openai-httpx":
        client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base_url, max_retries=0)
    elif lib == "openai-aiohttp":
        client = openai.AsyncOpenAI(
            api_key="sk-bench", base_url=base_url, max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
    else:
        raise SystemExit(f"unknown --lib {lib!r}; choose one of {', '.join(LIBS)}")

    async def call() -> Any:
        return await client.images.generate(
            prompt=PROMPT, model="dall-e-2", n=1, size=size, response_format="b64_json"
        )

    return call, client


async def _close(lib: str, client: Any) -> None:
    if lib == "asyncimg":
        await client.aclose()
    else:
        await client.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, warm up, measure; the figures as a dict."""
    started = time.perf_counter()
    call, client = await _setup(args.lib, args.port, args.size, args.concurrency)
    setup_s = time.perf_counter() - started
    try:
        first = await call()
        side = int(args.size.split("x")[0])
        if len(_b64_of(first)) < side * 50:
            raise SystemExit(f"{args.lib}: the response holds no image of {args.size}")
        await _drive(call, args.concurrency, args.concurrency)  # open the pool
        profiler = _start_profiler(args.profile)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(_drive(call, args.calls, args.concurrency), args.time_limit)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        _stop_profiler(profiler, args.profile, args.profile_out)
    finally:
        await _close(args.lib, client)
    return {
        "lib": args.lib,
        "size": args.size,
        "concurrency": args.concurrency,
        "calls": args.calls,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_per_call_ms": 1000 * cpu / args.calls,
        "user_per_call_ms": 1000 * (ru1.ru_utime - ru0.ru_utime) / args.calls,
        "sys_per_call_ms": 1000 * (ru1.ru_stime - ru0.ru_stime) / args.calls,
        "calls_per_s": args.calls / wall,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_s": setup_s,
    }


def _start_profiler(kind: str | None) -> Any:
    if kind == "cprofile":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        return prof
    if kind == "pyinstrument":
        import pyinstrument

        prof = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")
        prof.start()
        return prof
    return None


def _stop_profiler(prof: Any, kind: str | None, out: str | None) -> None:
    if prof is None:
        return
    if kind == "cprofile":
        prof.disable()
        prof.dump_stats(out or "profile.pstats")
    else:
        prof.stop()
        with open(out or "profile.txt", "w") as f:
            f.write(prof.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=LIBS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--profile", choices=("cprofile", "pyinstrument"), default=None)
    parser.add_argument("--profile-out", default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
