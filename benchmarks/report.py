"""`asyncimg report` on a 10,000-item batch: time to write it, its size, time to open it.

A real batch makes the directory: ``run_batch`` against the in-process emulator,
rate limiter off, 10,000 prompts at 512x512 (so every image gets a thumbnail),
1% of them failing on purpose. Then, side by side with what a user would write
by hand instead (one HTML file with a card and a full-size ``<img>`` per item):

* the time to write the page: with thumbnails made (Pillow, first run), with the
  thumbnails already there (a rerun), without thumbnails;
* the page's size, the thumbnails' total size against the images';
* in headless Chromium, from ``file://``: first contentful paint, the moment the
  first page of cards is drawn, the images in the first screen decoded, the load
  event (median of ``--rounds`` fresh browsers).

    .venv/bin/python benchmarks/report.py [--items 10000] [--rounds 3]

Needs Pillow (the ``images`` extra) and Chromium. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncimg import AsyncImagesClient  # noqa: E402
from asyncimg._batch.input import open_text  # noqa: E402
from asyncimg._batch.manifest import read_records  # noqa: E402
from asyncimg._batch.report import REPORT_NAME, THUMBS_DIR, write_report  # noqa: E402
from asyncimg._batch.runner import run_batch  # noqa: E402
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator  # noqa: E402
from tests.browser import Browser, find_chromium  # noqa: E402

_TIMINGS = """(async () => {
  const inView = [...document.images].filter(img => {
    const r = img.getBoundingClientRect();
    return r.top < innerHeight && r.bottom > 0;
  });
  await Promise.all(inView.map(img => img.decode().catch(() => null)));
  const at = performance.now();
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const mark = performance.getEntriesByName('asyncimg-rendered')[0];
  const nav = performance.getEntriesByType('navigation')[0];
  return {fcp: paint ? paint.startTime : null, drawn: mark ? mark.startTime : null,
          visible: at, load: nav.loadEventEnd, cards: document.querySelectorAll('.card').length};
})()"""


async def make_batch(directory: Path, items: int) -> float:
    src = directory / "prompts.txt"
    src.write_text(
        "".join(
            f"prompt {i} {CONTENT_POLICY_MARKER}\n" if i % 100 == 99 else f"prompt {i}\n"
            for i in range(items)
        )
    )
    started = time.perf_counter()
    async with Emulator(api_key="sk-bench") as emu, AsyncImagesClient(
        api_key="sk-bench", base_url=emu.base_url, rate_limit=None, max_concurrency=32,
        max_retries=0,
    ) as client:
        await run_batch(
            client, open_text(str(src)), "txt", directory / "out",
            params={"model": "dall-e-2", "size": "512x512"},
        )
    return time.perf_counter() - started


def naive_page(directory: Path) -> Path:
    """What a user would write instead: every card in the HTML, every image at full size."""
    cards = []
    for item in read_records(directory):
        imgs = "".join(f'<img src="{html.escape(f)}" width="230">' for f in item.files)
        error = html.escape(str((item.error or {}).get("message", "")))
        cards.append(f"<div class=card>{imgs}<p>{html.escape(item.prompt)}</p>{error}</div>")
    page = directory / "naive.html"
    page.write_text("<!doctype html><meta charset=utf-8><body>" + "".join(cards))
    return page


async def open_page(chromium: str, page: Path, rounds: int) -> dict[str, float]:
    runs: list[dict[str, Any]] = []
    for _ in range(rounds):
        async with Browser(chromium) as browser:
            await browser.open(page.as_uri())
            runs.append(await browser.evaluate(_TIMINGS))
    return {
        key: statistics.median(r[key] for r in runs) if runs[0][key] is not None else float("nan")
        for key in ("fcp", "drawn", "visible", "load", "cards")
    }


def _size(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.items, args.rounds = 30, 1
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        made = await make_batch(base, args.items)
        out = base / "out"
        print(f"batch of {args.items:,} items (512x512) made in {made:.1f} s")

        timings = {}
        for label, thumbnails in (("cold", True), ("warm", True), ("none", False)):
            started = time.perf_counter()
            write_report(out, thumbnails=thumbnails)
            timings[label] = time.perf_counter() - started
        index = out / REPORT_NAME
        thumbs = list((out / THUMBS_DIR).iterdir())
        images = [p for p in out.iterdir() if p.suffix == ".png"]
        write_report(out)  # the page with thumbnails, for the browser
        naive_started = time.perf_counter()
        naive = naive_page(out)
        naive_time = time.perf_counter() - naive_started

        ours = await open_page(chromium, index, args.rounds)
        theirs = await open_page(chromium, naive, args.rounds)
        rows = [
            ("write the page, thumbnails made (s)", f"{timings['cold']:.2f}", "-"),
            ("write the page, thumbnails reused (s)", f"{timings['warm']:.2f}", "-"),
            ("write the page, no thumbnails (s)", f"{timings['none']:.2f}", f"{naive_time:.2f}"),
            ("page size (MB)", f"{index.stat().st_size / 1e6:.2f}",
             f"{naive.stat().st_size / 1e6:.2f}"),
            ("images it shows (MB)", f"{_size(thumbs):.1f} thumbnails", f"{_size(images):.1f}"),
            ("first contentful paint (ms)", f"{ours['fcp']:.0f}", f"{theirs['fcp']:.0f}"),
            ("first page of cards drawn (ms)", f"{ours['drawn']:.0f}", "-"),
            ("images of the first screen decoded (ms)", f"{ours['visible']:.0f}",
             f"{theirs['visible']:.0f}"),
            ("load event (ms)", f"{ours['load']:.0f}", f"{theirs['load']:.0f}"),
            ("cards in the DOM", f"{ours['cards']:.0f}", f"{theirs['cards']:.0f}"),
        ]
        print(f"\n| {args.items:,} items | asyncimg report | one static card per item |")
        print("|---|---:|---:|")
        for name, a, b in rows:
            print(f"| {name} | {a} | {b} |")
        print(json.dumps({"timings": timings, "ours": ours, "naive": theirs}))
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
