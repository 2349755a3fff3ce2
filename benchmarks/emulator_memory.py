"""RSS of `asyncimg serve` over 30,000 url generations: bounded journal and urls against none.

The emulator runs as its own process (``python -m asyncimg serve``); a client
in this process sends the requests at concurrency 16 and reads the server's
VmRSS from /proc every 5,000. "bounded" is the default (journal and urls of
10,000); "unbounded" is what the emulator did before (every journal entry and
url kept), approximated with bounds larger than the run. Goal: flat after the
bound is reached.

    .venv/bin/python benchmarks/emulator_memory.py [--requests 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _drive(base_url: str, pid: int, total: int, step: int) -> list[float]:
    from asyncimg import AsyncImagesClient

    figures = [_rss_mb(pid)]
    async with AsyncImagesClient(
        api_key="sk-bench", base_url=base_url, rate_limit=None, max_concurrency=16
    ) as client:
        sent = 0
        while sent < total:
            batch = [f"prompt {sent + i}" for i in range(step)]
            async for item in client.generate_many(
                batch, model="dall-e-2", size="256x256", response_format="url"
            ):
                assert item.error is None, item.error
            sent += step
            figures.append(_rss_mb(pid))
    return figures


def _run(total: int, step: int, extra: list[str]) -> list[float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "serve", "--port", "0", *extra],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split("listening on ", 1)[1].split()[0]
        return asyncio.run(_drive(base_url, proc.pid, total, step))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--step", type=int, default=5_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.step = 100, 50
    big = str(args.requests + 1)
    runs = {
        "bounded (defaults)": [],
        "unbounded (before)": ["--journal-size", big, "--max-urls", big],
    }
    print(f"server RSS in MB after every {args.step} requests")
    header = "requests".ljust(20) + "".join(
        str(i * args.step).rjust(8) for i in range(args.requests // args.step + 1)
    )
    print(header)
    for name, extra in runs.items():
        figures = _run(args.requests, args.step, extra)
        print(name.ljust(20) + "".join(f"{x:8.1f}" for x in figures), flush=True)


if __name__ == "__main__":
    main()
