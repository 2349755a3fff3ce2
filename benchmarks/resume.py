"""Resuming a big batch: reading and compacting a manifest of a million lines.

    .venv/bin/python benchmarks/resume.py               # 1,000,000 lines, 3 rounds
    .venv/bin/python benchmarks/resume.py --quick       # 10,000 lines, 1 round (seconds)

The manifest is made synthetically in a temporary directory: ``--lines`` lines as
``asyncimg batch`` writes them (:meth:`Record.to_json`, dall-e-2 parameters, one file
each, about 400 bytes a line), every item done, its file present (one image shared by
all lines: each line's check is made all the same, but the one listing of the directory
holds one name, not a million), plus ``--redone`` items
written twice (a failure, then its retry). Each round opens it in a fresh process
(``Manifest(DIR).open()``: lock, read, compact, what a resume does before sending
anything) and reports the seconds it took and the process's peak RSS (ru_maxrss), and
the baseline RSS of the same process before opening; every round opens the same manifest
(its failed lines dropped, the file rewritten). Goal: under 10 s and 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from asyncimg._batch.manifest import MANIFEST_NAME, Manifest, Record  # noqa: E402


def make(directory: Path, lines: int, redone: int) -> int:
    """Write the manifest; its size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    params = {"model": "dall-e-2", "size": "256x256", "response_format": "b64_json"}
    done = Record(id="0" * 16, line=0, prompt="a lantern in the fog, number 0", params=params,
                  status="ok", files=("image.png",), images=1, request_id="req_" + "0" * 32,
                  attempts=1, seconds=3.2, sent=((1764800000.0, 1),), cost_usd=0.016)
    failed = Record(id="0" * 16, line=0, prompt="p", params=params, status="failed",
                    error={"type": "APIStatusError", "status": 500, "message": "oops"})
    template = done.to_json()
    retried = failed.to_json()
    with open(directory / MANIFEST_NAME, "w", encoding="utf-8") as f:
        for i in range(redone):
            f.write(retried.replace("0" * 16, f"{i:016x}", 1))
        chunk = []
        for i in range(lines):
            chunk.append(template.replace("0" * 16, f"{i:016x}", 1))
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    return (directory / MANIFEST_NAME).stat().st_size


def worker(directory: Path) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    manifest = Manifest(directory)
    manifest.open()
    seconds = time.perf_counter() - started
    done = len(manifest.done)
    manifest.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base, "done": done,
                      "dropped": manifest.dropped}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--redone", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker))
        return 0
    if args.quick:
        args.lines, args.redone, args.rounds = 10_000, 100, 1
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "out"
        size = make(directory, args.lines, args.redone)
        pristine = Path(tmp) / "pristine.jsonl"  # each round compacts the same manifest
        shutil.copyfile(directory / MANIFEST_NAME, pristine)
        print(f"manifest: {args.lines:,} lines done + {args.redone:,} failed then redone, "
              f"{size / 1e6:.0f} MB; load average {os.getloadavg()[0]:.1f}", flush=True)
        rounds = []
        for r in range(args.rounds):
            shutil.copyfile(pristine, directory / MANIFEST_NAME)
            out = subprocess.run([sys.executable, __file__, "--worker", str(directory)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout)
            assert result["done"] == args.lines, result
            rounds.append(result)
            print(f"round {r + 1}: {result['seconds']:.2f} s, peak RSS {result['peak_mb']:.0f} MB "
                  f"(before opening {result['base_mb']:.0f} MB), dropped {result['dropped']:,}",
                  flush=True)
    seconds = statistics.median(r["seconds"] for r in rounds)
    peak = statistics.median(r["peak_mb"] for r in rounds)
    print(f"median of {len(rounds)}: {seconds:.2f} s (goal < 10 s), peak RSS {peak:.0f} MB "
          "(goal < 150 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
