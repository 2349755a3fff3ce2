"""One prompts file on several processes: ``asyncimg batch --shard K/N`` under one budget.

    .venv/bin/python benchmarks/shards.py                 # about a minute
    .venv/bin/python benchmarks/shards.py --prompts 60    # a smaller run

Each shard is a real ``asyncimg batch`` process (as on N machines), all writing to
one output directory, sharing ``--rate`` through one redis-server (started here,
from PATH). The emulator runs in this process and enforces its own limit with
429s; what it saw is the measure:

- ``one key``: 3 shards against one server allowing LIMIT images per PER seconds,
  at the same rate (the default margin, 1 % of the window) and at a rate 10 %
  slower (``--rate LIMIT/(1.1 PER)``: 0.2 s of margin for the trip);
- ``two keys``: 2 shards, each with its own base URL and ``--limit-name`` (two
  Azure deployments, two organizations), each server allowing LIMIT per PER.

Per run: wall time of the slowest shard, images accepted, the fullest window of
arrivals at each server, utilisation (images accepted over what the limits allow
from the first arrival to the last + PER) and the 429s. Nothing here talks to any
address but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncimg.testing import Emulator, emulator_thread  # noqa: E402
from tests._redis_server import running_redis  # noqa: E402  (the tests' redis-server runner)

LIMIT, PER = 20, 2.0


def _shard(prompts: Path, out: Path, base_url: str, redis: str, name: str, rate: str,
           shard: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ASYNCIMG_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "batch", str(prompts), "-o", str(out),
         "--base-url", base_url, "--model", "dall-e-2", "--size", "256x256", "-q",
         "--rate", rate, "--redis", redis, "--limit-name", name, "--shard", shard],
        cwd=ROOT, env=env | {"OPENAI_API_KEY": "sk-bench"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _measure(emus: list[Emulator], took: float, label: str) -> dict[str, Any]:
    arrivals = [a for emu in emus for a in emu.arrivals]
    times = [t for t, _ in arrivals]
    images = sum(n for _, n in arrivals)
    allowed = len(emus) * LIMIT * (max(times) - min(times) + PER) / PER
    return {
        "run": label,
        "seconds": round(took, 2),
        "images": images,
        "fullest": "/".join(str(emu.max_images_in_window()) for emu in emus),
        "utilisation": round(images / allowed, 3),
        "429s": sum(len(emu.requests("generate", status=429)) for emu in emus),
    }


def run(prompts: int, label: str, rate: str, keys: int, shards: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, running_redis() as redis, ExitStack() as stack:
        src = Path(tmp) / "prompts.txt"
        src.write_text("".join(f"a lantern number {i}\n" for i in range(prompts)))
        emus = [stack.enter_context(emulator_thread(images_per_minute=(LIMIT, PER),
                                                    latency=0.05)) for _ in range(keys)]
        started = time.monotonic()
        procs = [
            _shard(src, Path(tmp) / "out", emus[k % keys].base_url, redis.url,
                   f"key-{k % keys}", rate, f"{k + 1}/{shards}")
            for k in range(shards)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            if proc.returncode:
                raise SystemExit(f"a shard failed ({proc.returncode}): {err.decode()}")
        return _measure(emus, time.monotonic() - started, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=180, help="prompts in the file")
    parser.add_argument("--quick", action="store_true",
                        help="one run of 3 shards over 24 prompts (seconds)")
    args = parser.parse_args()
    slow = f"{LIMIT}/{PER * 1.1:g}s"
    if args.quick:
        args.prompts = 24
        rows = [run(args.prompts, f"one key, 3 shards, --rate {slow}", slow, 1, 3)]
    else:
        rows = [
            run(args.prompts, f"one key, 3 shards, --rate {LIMIT}/{PER:g}s",
                f"{LIMIT}/{PER:g}s", 1, 3),
            run(args.prompts, f"one key, 3 shards, --rate {slow}", slow, 1, 3),
            run(args.prompts, f"two keys, 2 shards, --rate {slow} each", slow, 2, 2),
        ]
    print(f"{args.prompts} prompts; each server allows {LIMIT} images per {PER:g} s\n")
    print("| run | wall s | images | fullest window | utilisation | 429s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['seconds']} | {r['images']} | {r['fullest']} "
              f"| {r['utilisation']:.1%} | {r['429s']} |")


if __name__ == "__main__":
    main()
