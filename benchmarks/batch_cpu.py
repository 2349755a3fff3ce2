"""A batch item against a bare call: the client CPU each costs at ``--rate off``.

    .venv/bin/python benchmarks/batch_cpu.py              # 5 paired rounds (about a minute)
    .venv/bin/python benchmarks/batch_cpu.py --quick      # one small round (seconds)

The fixed-response server (``benchmarks/_server.py``, 256x256 ``b64_json``, about
100 KB of base64 an image) runs in its own process. Against it, each round runs in
fresh processes, alternately:

* ``python -m asyncimg batch P.txt -o OUT -q --rate off --concurrency 16 ...``
  (a new output directory each time: every prompt is sent, and its image written
  and recorded in the manifest), and
* a script awaiting as many ``client.generate(...)`` calls, 16 at a time
  (``rate_limit=None``, ``max_retries=0``; the images are decoded, not written),
* the same script saving each image with ``client.save(...)`` (what a user who wants
  the files writes instead of a batch: no manifest, no resume),

each for ``--small`` and ``--large`` prompts. A process's CPU is its user + sys time
(``resource.getrusage(RUSAGE_CHILDREN)`` around it); the marginal cost of an item is
the difference between the large and the small run over the difference in prompts, so
the imports and the start are left out. The ratio batch/bare is taken per round and
the median of the rounds reported (goal: at most 1.5x), and batch/save beside it.
Nothing is written but the temporary directory; nothing talks to any address but
127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import _env, _free_port, start_server  # noqa: E402

GOAL = 1.5

BARE = """
import asyncio, sys
import asyncimg

async def main(port, count, out):
    async with asyncimg.AsyncImagesClient(
        api_key="sk-bench", base_url=f"http://127.0.0.1:{port}/v1", rate_limit=None,
        max_retries=0, max_concurrency=16,
    ) as client:
        gate = asyncio.Semaphore(16)

        async def one(i):
            async with gate:
                response = await client.generate(
                    f"a lantern in the fog, number {i}", model="dall-e-2", size="256x256",
                    response_format="b64_json",
                )
                assert response.data[0].b64_json
                if out:
                    await client.save(response, out, stem=f"item-{i}")

        await asyncio.gather(*(one(i) for i in range(count)))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
"""


def _cpu_of(cmd: list[str], cwd: Path) -> float:
    """User + sys seconds of the child process running ``cmd``.

    Raises:
        RuntimeError: it failed.
    """
    env = {**_env(), "OPENAI_API_KEY": "sk-bench"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{done.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def batch_cpu(port: int, prompts: Path, work: Path, tag: str) -> float:
    """CPU seconds of one ``asyncimg batch`` run of ``prompts`` into a new directory."""
    out = work / f"out-{tag}"
    cmd = [sys.executable, "-m", "asyncimg", "batch", str(prompts), "-o", str(out), "-q",
           "--rate", "off", "--concurrency", "16", "--max-retries", "0",
           "--model", "dall-e-2", "--size", "256x256", "--format", "b64_json",
           "--base-url", f"http://127.0.0.1:{port}/v1"]
    seconds = _cpu_of(cmd, work)
    files = sum(1 for name in os.listdir(out) if name.endswith(".png"))
    lines = (out / "manifest.jsonl").read_bytes().count(b"\n")
    count = prompts.read_text(encoding="utf-8").count("\n")
    assert files == lines == count, (files, lines, count)
    return seconds


def bare_cpu(port: int, count: int, work: Path, save_to: Path | None = None) -> float:
    """CPU seconds of one process awaiting ``count`` generate calls, 16 at a time (each
    image saved into ``save_to``, a new directory, when given)."""
    out = [] if save_to is None else [str(save_to)]
    return _cpu_of([sys.executable, "-c", BARE, str(port), str(count), *out], work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the output directories go (default: the temporary "
                        "directory; give a folder on a disk for fsyncs that cost what "
                        "they cost there)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.large, args.rounds = 20, 80, 1
    extra = args.large - args.small
    port = _free_port()
    server = start_server(port, None)
    ratios, batch_ms, bare_ms, save_ms, save_ratios = [], [], [], [], []
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            work = Path(tmp)
            prompts = {}
            for count in (args.small, args.large):
                prompts[count] = work / f"prompts-{count}.txt"
                prompts[count].write_text(
                    "".join(f"a lantern in the fog, number {i}\n" for i in range(count)),
                    encoding="utf-8")
            print(f"{args.rounds} rounds, {args.small} and {args.large} prompts; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            for r in range(args.rounds):
                cpu: dict[tuple[str, int], float] = {}
                kinds = ("batch", "bare", "save")
                order = kinds[r % 3:] + kinds[:r % 3]
                for kind in order:
                    for count in (args.small, args.large):
                        cpu[kind, count] = (
                            batch_cpu(port, prompts[count], work, f"{r}-{count}")
                            if kind == "batch" else bare_cpu(
                                port, count, work,
                                work / f"saved-{r}-{count}" if kind == "save" else None))
                batch = (cpu["batch", args.large] - cpu["batch", args.small]) / extra * 1e3
                bare = (cpu["bare", args.large] - cpu["bare", args.small]) / extra * 1e3
                batch_ms.append(batch)
                save = (cpu["save", args.large] - cpu["save", args.small]) / extra * 1e3
                bare_ms.append(bare)
                save_ms.append(save)
                ratios.append(batch / bare if bare > 0 else float("inf"))
                save_ratios.append(batch / save if save > 0 else float("inf"))
                print(f"round {r + 1}: batch {batch:.2f} ms per item "
                      f"({cpu['batch', args.small]:.2f} s / {cpu['batch', args.large]:.2f} s), "
                      f"generate {bare:.2f} ms ({cpu['bare', args.small]:.2f} s / "
                      f"{cpu['bare', args.large]:.2f} s), ratio {ratios[-1]:.2f}x; "
                      f"generate + save {save:.2f} ms, batch/save {save_ratios[-1]:.2f}x; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        server.kill()
        server.wait()
    ratio = statistics.median(ratios)
    print(f"median of {args.rounds}: batch {statistics.median(batch_ms):.2f} ms per item, "
          f"generate {statistics.median(bare_ms):.2f} ms, paired ratio {ratio:.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}; goal <= {GOAL}x); generate + save "
          f"{statistics.median(save_ms):.2f} ms, paired batch/save "
          f"{statistics.median(save_ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
