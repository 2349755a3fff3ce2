"""Peak RSS of `asyncimg batch` for 250 and 1,000 1024x1024 b64 images at concurrency 32.

The server is ``benchmarks/_server.py`` in a separate process (its memory is
not counted): it answers every generation with a realistic 1024x1024 PNG of
about 1.1 MB (1.5 MB of base64), as DALL-E 2 does; the emulator's own images
compress to about 20 KB and would hide the cost of real ones. Each batch runs
in a fresh process of its own, which reports its peak RSS (ru_maxrss). Goal:
the two within 10% of each other, both under 150 MB.

    .venv/bin/python benchmarks/batch_memory.py [--sizes 250 1000]
    .venv/bin/python benchmarks/batch_memory.py --concurrency auto --rate 50/0.5

The second form runs at the client's defaults (the concurrency ceiling sized from
the rate) under the default budget of 50 images, its window scaled from 60 s to
0.5 s so that 1,000 images take seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(base_url: str, count: int, concurrency: int | None, rate: str | None) -> None:
    from asyncimg import AsyncImagesClient, RateLimit
    from asyncimg._batch.runner import run_batch

    limit = None
    if rate:
        images, per = rate.split("/")
        limit = RateLimit(int(images), float(per))

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "prompts.txt"
            src.write_text("".join(f"benchmark prompt {i}\n" for i in range(count)))
            started = time.monotonic()
            async with AsyncImagesClient(
                api_key="sk-bench", base_url=base_url, rate_limit=limit,
                max_concurrency=concurrency,
            ) as client:
                summary = await run_batch(
                    client, lambda: open(src), "txt", Path(tmp) / "out",  # noqa: SIM115
                    params={"model": "dall-e-2", "size": "1024x1024",
                            "response_format": "b64_json"},
                )
            elapsed = time.monotonic() - started
            assert summary.ok == count, summary
            size = sum(p.stat().st_size for p in (Path(tmp) / "out").glob("*.png"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
        return {"images": count, "peak_rss_mb": round(peak, 1), "seconds": round(elapsed, 2),
                "image_mb_each": round(size / count / 2**20, 2)}

    print(json.dumps(asyncio.run(run())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--concurrency", default="32", help="an integer, or auto (the default)")
    parser.add_argument("--rate", help="IMAGES/SECONDS, e.g. 50/0.5 (default: no limiter)")
    parser.add_argument("--worker", nargs=2, metavar=("BASE_URL", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.sizes = [5, 10]
    if args.worker:
        concurrency = None if args.concurrency == "auto" else int(args.concurrency)
        _worker(args.worker[0], int(args.worker[1]), concurrency, args.rate)
        return 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_server.py")), "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        if "ready" not in server.stdout.readline():
            raise SystemExit("the benchmark server did not start")
        base_url = f"http://127.0.0.1:{port}/v1"
        results = []
        for count in args.sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", base_url, str(count),
                 "--concurrency", str(args.concurrency),
                 *(["--rate", args.rate] if args.rate else [])],
                capture_output=True, text=True,
            )
            if out.returncode:
                raise SystemExit(f"the batch of {count} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{count:>6} images: peak RSS {result['peak_rss_mb']:.1f} MB, "
                  f"{result['seconds']:.1f}s, {result['image_mb_each']} MB per image", flush=True)
        peaks = [r["peak_rss_mb"] for r in results]
        spread = (max(peaks) - min(peaks)) / min(peaks) * 100
        verdict = "ok" if spread <= 10 and max(peaks) < 150 else "MISSED"
        print(f"spread {spread:.1f}% (goal <= 10%), max {max(peaks):.1f} MB (goal < 150): "
              f"{verdict}")
        return 0 if verdict == "ok" or args.quick else 1
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    raise SystemExit(main())
