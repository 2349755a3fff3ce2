"""`asyncimg report` on a 100,000-item batch: time to write it, first and second run, its size,
time to its first cards.

The directory is made directly (a run of the emulator at this size takes ten minutes): a
manifest of ``--items`` lines as the runner writes them, 1 % failed, one image per done
item, 256x256 PNGs (no thumbnail needed: what the second run must not open again) and
every 50th 512x512 (thumbnailed), a ``runs.jsonl`` line. Then, for this checkout and,
with ``--before DIR``, for the code in ``DIR`` (a checkout of main), alternately in each
round, from a directory cleared of the report's files:

* ``asyncimg report DIR`` as a user runs it (a new process): the first run (thumbnails
  made), the second (thumbnails there), and twice with ``--no-thumbnails``;
* the size of ``index.html`` (and of the files beside it it loads later);
* in headless Chromium from ``file://`` (a fresh browser each): first contentful paint
  and the moment the first page of cards is drawn, for the page with thumbnails and the
  page without.

    .venv/bin/python benchmarks/report.py [--items 100000] [--rounds 3] [--before DIR]

Medians of ``--rounds``. Needs Pillow (the ``images`` extra) and Chromium. Writes
nothing outside a temporary directory (``--quick``: 300 items, one round, seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncimg.testing._png import make_png  # noqa: E402
from tests.browser import Browser, find_chromium  # noqa: E402

# Made by the report; removed before each first run.
_REPORT_FILES = ("index.html", ".thumbs", ".report")

_TIMINGS = """new Promise(done => {
  const mark = performance.getEntriesByName('asyncimg-rendered')[0];
  const answer = fcp => done({fcp, drawn: mark ? mark.startTime : null,
                             cards: document.querySelectorAll('.card').length});
  new PerformanceObserver(list => {
    const paint = list.getEntriesByName('first-contentful-paint')[0];
    if (paint) answer(paint.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => answer(null), 5000);
})"""


def make_directory(folder: Path, items: int) -> None:
    """A batch directory of ``items`` manifest lines and their images (see the docstring)."""
    folder.mkdir()
    start = 1_790_000_000.0
    lines = []
    for i in range(items):
        item_id = f"{i:06d}-{i * 2654435761 % 16**8:08x}"
        at = start + i * 0.05
        line: dict[str, Any] = {
            "id": item_id, "line": i + 1,
            "prompt": f"a watercolour of lighthouse number {i} at dusk, seen from the sea",
            "params": {"model": "dall-e-2", "size": "256x256"}, "attempts": 1,
            "sent": [{"at": at, "images": 1}], "rate_limited": 0,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime(at + 1)),
        }
        if i % 100 == 99:
            line.update(status="failed", files=[], seconds=0.2, error={
                "type": "ContentPolicyError", "code": "content_policy_violation",
                "status": 400, "message": "refused by the content policy"})
        else:
            name = f"{item_id}-0.png"
            side = 512 if i % 50 == 0 else 256
            (folder / name).write_bytes(make_png(side, side, str(i % 97)))
            line.update(status="ok", files=[name], seconds=0.4, request_id=f"req_{i:08d}",
                        cost_usd=0.016)
        lines.append(json.dumps(line) + "\n")
    (folder / "manifest.jsonl").write_text("".join(lines))
    run = {"started_at": start, "finished_at": start + items * 0.05 + 1, "route": "direct",
           "rate": {"images": 1200, "per": 60.0, "margin": 0.6, "burst": None},
           "params": {"model": "dall-e-2"}, "images": items - items // 100, "waited": 0.0,
           "rate_limited": 0, "seconds": items * 0.05 + 1}
    (folder / "runs.jsonl").write_text(json.dumps(run) + "\n")


def clear(folder: Path) -> None:
    for name in _REPORT_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build(code: Path, folder: Path, *flags: str) -> float:
    """Wall seconds of ``asyncimg report folder`` in a new process, with the code in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "asyncimg", "report", str(folder), *flags],
                   cwd=code, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def check_code(code: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    found = subprocess.run([sys.executable, "-c", "import asyncimg; print(asyncimg.__file__)"],
                           cwd=code, env=env, check=True, capture_output=True, text=True)
    if not Path(found.stdout.strip()).is_relative_to(code):
        sys.exit(f"{code}: imports asyncimg from {found.stdout.strip()}")


async def first_cards(chromium: str, page: Path) -> dict[str, float | None]:
    async with Browser(chromium) as browser:
        await browser.open(page.as_uri())
        result: dict[str, float | None] = await browser.evaluate(_TIMINGS)
        return result


def sizes(folder: Path) -> tuple[float, float]:
    """``index.html`` and the chunk files beside it, in MB."""
    side = folder / ".report"
    later = sum(p.stat().st_size for p in side.iterdir()) if side.is_dir() else 0
    return (folder / "index.html").stat().st_size / 1e6, later / 1e6


async def one_round(chromium: str, code: Path, folder: Path) -> dict[str, float | None]:
    clear(folder)
    row: dict[str, float | None] = {}
    row["first run (s)"] = build(code, folder)
    row["second run (s)"] = build(code, folder)
    row["index.html (MB)"], row["loaded later (MB)"] = sizes(folder)
    seen = await first_cards(chromium, folder / "index.html")
    row["first paint (ms)"], row["first cards (ms)"] = seen["fcp"], seen["drawn"]
    row["no thumbnails, first run (s)"] = build(code, folder, "--no-thumbnails")
    row["no thumbnails, second run (s)"] = build(code, folder, "--no-thumbnails")
    row["no thumbnails: index.html (MB)"], _ = sizes(folder)
    seen = await first_cards(chromium, folder / "index.html")
    row["no thumbnails: first paint (ms)"] = seen["fcp"]
    row["no thumbnails: first cards (ms)"] = seen["drawn"]
    return row


def _median(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):,.2f}" if known else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.items, args.rounds = 300, 1
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium on PATH")
    codes = {"after": ROOT}
    if args.before is not None:
        codes = {"before": args.before.resolve(), **codes}
    for code in codes.values():
        check_code(code)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "out"
        started = time.perf_counter()
        make_directory(folder, args.items)
        print(f"{args.items:,} items made in {time.perf_counter() - started:.1f} s; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        rows: dict[str, list[dict[str, float | None]]] = {label: [] for label in codes}
        for number in range(args.rounds):
            order = list(codes.items())
            if number % 2:
                order.reverse()  # alternately first: neither gets the quieter minutes
            for label, code in order:
                rows[label].append(await one_round(chromium, code, folder))
                print(f"round {number + 1} {label}: {json.dumps(rows[label][-1])} "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    labels = list(codes)
    print(f"\n| {args.items:,} items (median of {args.rounds}) | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for key in rows[labels[0]][0]:
        cells = [_median([r[key] for r in rows[label]]) for label in labels]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
