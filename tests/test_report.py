"""`asyncimg report`: the page's data, escaping, old manifests, and the page in a real browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncimg import AsyncImagesClient
from asyncimg._batch.input import open_text
from asyncimg._batch.manifest import MANIFEST_NAME, RUNS_NAME, Record, read_records
from asyncimg._batch.report import (
    CHUNKS_DIR,
    REPORT_NAME,
    render,
    window_peaks,
    write_report,
)
from asyncimg._batch.runner import run_batch
from asyncimg._batch.thumbs import CACHE_NAME, THUMBS_DIR, make_thumbnails
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator, Fault

from .browser import Browser, find_chromium
from .conftest import TEST_KEY

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        env=env, timeout=120,
    )


def _prompts(path: Path) -> int:
    lines = [
        {"prompt": f"a small painting of lighthouse number {i}"} for i in range(6)
    ] + [
        {"prompt": "two foxes, larger", "size": "512x512", "n": 2},
        {"prompt": "a larger heron", "size": "512x512"},
        {"prompt": f"a cathedral {HOSTILE}"},
        {"prompt": f"this one is {CONTENT_POLICY_MARKER}"},
        {"prompt": "x" * 1200},  # too long for dall-e-2: a ValidationError item
        {"prompt": "a calm lake & <b>bold</b> mountains"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A batch run by the CLI with ``--report``: 12 items, 2 failed, thumbnails for 3 images."""
    base = tmp_path_factory.mktemp("report")
    count = _prompts(base / "p.jsonl")
    out = base / "out"
    proc = _cli(
        "batch", str(base / "p.jsonl"), "-o", str(out), "--emulator", "--model", "dall-e-2",
        "--size", "256x256", "--rate", "600/min", "--report",
    )
    assert proc.returncode == 1, proc.stderr  # two items fail on purpose
    assert proc.stdout.strip().splitlines()[-1] == str(out / REPORT_NAME)
    return out, count


# -- what the runner records ----------------------------------------------------------


def test_the_batch_records_send_times_and_the_run(batch_dir: tuple[Path, int]) -> None:
    out, count = batch_dir
    lines = [json.loads(x) for x in (out / MANIFEST_NAME).read_text().splitlines()]
    assert len(lines) == count
    done = [x for x in lines if x["status"] == "ok"]
    assert all(len(x["sent"]) == x["attempts"] == 1 for x in done)
    assert {x["sent"][0]["images"] for x in done} == {1, 2}
    assert all(x["rate_limited"] == 0 for x in lines)
    (run,) = [json.loads(x) for x in (out / RUNS_NAME).read_text().splitlines()]
    assert run["rate"] == {"images": 600, "per": 60.0, "margin": 0.6, "burst": None}
    assert (run["ok"], run["failed"], run["images"]) == (10, 2, 11)
    assert run["started_at"] <= min(x["sent"][0]["at"] for x in done) <= run["finished_at"]


async def test_429s_and_every_attempt_are_recorded(emu: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text("only one\n")
    emu.add_fault(Fault.status(429, retry_after=0.05, times=1))
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, max_retries=2,
    ) as client:
        summary = await run_batch(
            client, open_text(str(src)), "txt", tmp_path / "out",
            params={"model": "dall-e-2", "size": "256x256"},
        )
    assert summary.rate_limited == 1
    (line,) = [json.loads(x) for x in (tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()]
    assert line["status"] == "ok"
    assert line["rate_limited"] == 1
    assert line["attempts"] == 2
    assert [s["images"] for s in line["sent"]] == [1, 1]
    assert line["sent"][0]["at"] < line["sent"][1]["at"]
    (run,) = [json.loads(x) for x in (tmp_path / "out" / RUNS_NAME).read_text().splitlines()]
    assert run["rate_limited"] == 1
    assert run["pauses"] == 1


async def test_usage_is_recorded_and_summed(emu: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text("one\ntwo\n")
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url) as client:
        await run_batch(
            client, open_text(str(src)), "txt", tmp_path,
            params={"model": "gpt-image-1", "size": "1024x1024", "quality": "low"},
        )
    items = read_records(tmp_path)
    assert all(item.usage and item.usage["total_tokens"] > 0 for item in items)
    total = sum(item.usage["total_tokens"] for item in items if item.usage)
    page = write_report(tmp_path).read_text()
    assert f'<div class="v">{total:,}</div><div class="k">total tokens</div>' in page


# -- the page, pure parts -------------------------------------------------------------


def test_window_peaks_is_the_trailing_window_count() -> None:
    sends = [(0.0, 4), (1.0, 4), (2.0, 3), (2.5, 1)]
    # Window 2 s over [0, 4): at 2.0 the first 4 have left: 4 + 3 = 7; at 2.5: 8;
    # at 3.0 the second 4 leave (an image counts in [t, t + 2)).
    assert window_peaks(sends, 0.0, 4.0, 2.0, 4) == [4, 8, 8, 4]
    assert window_peaks(sends, 0.0, 4.0, 2.0, 8) == [4, 4, 8, 8, 7, 8, 4, 4]
    assert window_peaks(sends, 0.0, 4.0, 2.0, 1) == [8]
    assert window_peaks([], 0.0, 1.0, 2.0, 3) == [0, 0, 0]
    # A send before the start still fills its window.
    assert window_peaks([(-1.0, 5)], 0.0, 2.0, 2.0, 2) == [5, 0]


def test_a_manifest_of_an_older_version_renders(tmp_path: Path) -> None:
    old = {
        "id": "abc", "line": 1, "prompt": "old & <i>new</i>", "params": {"size": "256x256"},
        "status": "ok", "files": ["abc-0.png"], "error": None, "request_id": "req_1",
        "revised_prompt": None, "attempts": 1, "seconds": 1.5,
        "finished_at": "2025-01-01T10:00:00.000+00:00",
    }
    failed = {"id": "def", "line": 2, "prompt": "p", "status": "failed",
              "error": {"type": "BadRequestError", "message": "no"}}
    outside = {"id": "ghi", "line": 3, "prompt": "q", "status": "ok",
               "files": ["../secret.png", "/etc/passwd"]}
    (tmp_path / "abc-0.png").write_bytes(b"not really a png")
    (tmp_path / MANIFEST_NAME).write_text(
        "".join(json.dumps(x) + "\n" for x in (old, failed, outside)) + "torn {"
    )
    proc = _cli("report", str(tmp_path), "--no-thumbnails")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{tmp_path / REPORT_NAME}\n"
    page = (tmp_path / REPORT_NAME).read_text()
    assert "approximate: no send times or rate were recorded (a directory of an older" in page
    assert '<div class="v">not recorded</div><div class="k">waited on the limiter</div>' in page
    items = read_records(tmp_path)
    assert [i.id for i in items] == ["abc", "def", "ghi"]
    assert '{"missing":"../secret.png"},{"missing":"/etc/passwd"}' in page  # never linked
    assert items[0].send_times[0][0] == pytest.approx(items[0].finished_at - 1.5)  # type: ignore[operator]
    assert "old & <i>" not in page  # escaped in the JSON too


def test_every_text_is_escaped(batch_dir: tuple[Path, int]) -> None:
    out, _ = batch_dir
    page = (out / REPORT_NAME).read_text()
    assert "<script>document" not in page
    assert "<img src=x" not in page
    assert "<b>bold</b>" not in page
    # Two script elements of our own, and nothing links outside the directory.
    assert page.count("<script") == 2
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_thumbnails_are_made_only_for_large_images(batch_dir: tuple[Path, int]) -> None:
    out, _ = batch_dir
    thumbs = sorted(p.name for p in (out / THUMBS_DIR).iterdir() if p.name != CACHE_NAME)
    larger = [i for i in read_records(out) if i.params.get("size") == "512x512"]
    assert thumbs == sorted(Path(f).stem + ".webp" for i in larger for f in i.files)
    from PIL import Image

    for name in thumbs:
        with Image.open(out / THUMBS_DIR / name) as img:
            assert max(img.size) == 256


def test_without_pillow_the_page_shows_the_images(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from asyncimg.testing._png import make_png

    (tmp_path / "big-0.png").write_bytes(make_png(512, 512))
    line = {"id": "big", "line": 1, "prompt": "p", "status": "ok", "files": ["big-0.png"]}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(line) + "\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert make_thumbnails(tmp_path, ["big-0.png"]) is None
    page = write_report(tmp_path).read_text()
    assert '"images":[{"full":"big-0.png"}]' in page
    assert not (tmp_path / THUMBS_DIR).exists()


def test_report_of_a_directory_without_manifest_is_a_usage_error(tmp_path: Path) -> None:
    proc = _cli("report", str(tmp_path))
    assert proc.returncode == 2
    assert "no manifest.jsonl" in proc.stderr


def test_item_from_json_tolerates_odd_fields() -> None:
    item = Record.from_json({"id": "x", "sent": [{"at": "soon"}, 3, {"at": 5.0}], "line": "2",
                           "attempts": "many", "seconds": float("nan"), "usage": []})
    assert (item.sent, item.line, item.attempts, item.seconds, item.usage) == (
        ((5.0, 1),), 0, None, 0.0, None
    )


# -- the page in a real browser -------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's executable; the browser tests skip without it (never on CI)."""
    found = find_chromium()
    if found is None:
        reason = "no Chromium on PATH: install Debian's chromium package to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    return found


_CHECK = """(async () => {
  const imgs = [...document.querySelectorAll('#gallery img')];
  for (const img of imgs) { img.loading = 'eager'; }
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  const series = document.querySelector('#charts path.series');
  return {
    cards: document.querySelectorAll('#gallery .card').length,
    failedCards: document.querySelectorAll('#gallery .card.failed').length,
    images: imgs.length,
    decoded: imgs.filter(img => img.complete && img.naturalWidth > 0).length,
    prompts: [...document.querySelectorAll('#gallery .prompt')].map(p => p.textContent),
    chartWidth: series ? series.getBBox().width : 0,
    chartSteps: series ? (series.getAttribute('d').match(/V/g) || []).length : 0,
    limitLines: document.querySelectorAll('#charts line.limit').length,
    title: document.title,
  };
})()"""

_FAILED = """(() => {
  document.querySelector('[data-status=failed]').click();
  const cards = [...document.querySelectorAll('#gallery .card')];
  return {cards: cards.length, failed: cards.filter(c => c.classList.contains('failed')).length,
          errors: cards.map(c => c.querySelector('.err b').textContent)};
})()"""

_SEARCH = """(() => {
  document.querySelector('[data-status=all]').click();
  const box = document.getElementById('search');
  box.value = 'HERON';
  box.dispatchEvent(new Event('input'));
  return [...document.querySelectorAll('#gallery .prompt')].map(p => p.textContent);
})()"""


async def test_the_page_in_chromium(
    chromium: str, batch_dir: tuple[Path, int], tmp_path: Path
) -> None:
    out, count = batch_dir
    async with Browser(chromium) as browser:
        await browser.open((out / REPORT_NAME).resolve().as_uri())
        seen = await browser.evaluate(_CHECK)
        await browser.screenshot(tmp_path / "report.png")
        assert seen["cards"] == count
        assert seen["failedCards"] == 2
        assert seen["images"] == 11  # ten done items, one of them with n=2
        assert seen["decoded"] == seen["images"]
        assert f"a cathedral {HOSTILE}" in seen["prompts"]  # shown as text, not run
        assert "a calm lake & <b>bold</b> mountains" in seen["prompts"]
        assert seen["title"] != "pwned"
        assert seen["chartWidth"] > 500
        assert seen["chartSteps"] >= 2
        assert seen["limitLines"] == 1
        failed = await browser.evaluate(_FAILED)
        assert failed["cards"] == failed["failed"] == 2
        assert sorted(failed["errors"]) == [
            "ContentPolicyError · content_policy_violation · 400", "ValidationError",
        ]
        assert await browser.evaluate(_SEARCH) == ["a larger heron"]
        assert browser.errors == []


def _long_dir(folder: Path, count: int, *, failed_every: int = 0) -> None:
    """``count`` items with a 64-px image each (every ``failed_every``-th failed instead)."""
    from asyncimg.testing._png import make_png

    lines = []
    for i in range(count):
        line: dict[str, object] = {
            "id": f"item{i}", "line": i + 1, "prompt": f"prompt {i}", "seconds": 0.1,
            "sent": [{"at": 1000.0 + i / 10, "images": 1}],
        }
        if failed_every and i % failed_every == failed_every - 1:
            line.update(status="failed", error={"type": "BadRequestError", "message": f"no {i}"})
        else:
            name = f"item{i}-0.png"
            (folder / name).write_bytes(make_png(64, 64, seed=str(i % 7)))
            line.update(status="ok", files=[name])
        lines.append(json.dumps(line))
    (folder / MANIFEST_NAME).write_text("\n".join(lines) + "\n")


_SETTLED = """new Promise(done => {
  const pager = document.getElementById('pager');
  const wait = () => pager.textContent.startsWith('loading') ? setTimeout(wait, 10) : done(
    {pager: pager.textContent,
     prompts: [...document.querySelectorAll('#gallery .prompt')].map(p => p.textContent),
     empty: [...document.querySelectorAll('#gallery .empty')].map(p => p.textContent)});
  wait();
})"""


def _search(text: str) -> str:
    return (f"(() => {{ const box = document.getElementById('search'); box.value = {text!r};"
            f" box.dispatchEvent(new Event('input')); }})()")


async def test_a_long_report_is_paged_and_loaded_in_chunks_in_chromium(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncimg._batch import report

    monkeypatch.setattr(report, "CHUNK_ITEMS", 30)  # 130 items: the page's and four files
    _long_dir(tmp_path, 130, failed_every=10)
    write_report(tmp_path, thumbnails=False)
    assert len(list((tmp_path / CHUNKS_DIR).iterdir())) == 4
    async with Browser(chromium) as browser:
        await browser.open((tmp_path / REPORT_NAME).as_uri())
        first = await browser.evaluate(_SETTLED)
        loaded = "Object.keys(chunks).map(Number)"  # the page script's loaded chunks
        # Page 1's chunks and page 2's (loaded ahead), not the last one.
        assert await browser.evaluate(loaded) == [0, 1, 2, 3]
        seen = set(first["prompts"])
        for _ in range(2):
            await browser.evaluate("document.querySelector('nav.pages .next').click()")
            page = await browser.evaluate(_SETTLED)
            assert len(page["prompts"]) <= 60
            seen.update(page["prompts"])
        assert seen == {f"prompt {i}" for i in range(130)}
        assert page["pager"] == "130 of 130 items · page 3 of 3"
        # The filters and the search see every item, wherever its chunk.
        await browser.evaluate("document.querySelector('[data-status=failed]').click()")
        failed = await browser.evaluate(_SETTLED)
        assert failed["pager"] == "13 of 130 items · page 1 of 1"
        assert failed["prompts"] == [f"prompt {i}" for i in range(9, 130, 10)]
        await browser.evaluate("document.querySelector('[data-status=all]').click()")
        await browser.evaluate(_search("PROMPT 128"))
        assert (await browser.evaluate(_SETTLED))["prompts"] == ["prompt 128"]
        assert browser.errors == []
        # A chunk gone (a directory copied in part): the page says so, and how to mend it.
        for chunk in (tmp_path / CHUNKS_DIR).iterdir():
            chunk.unlink()
        await browser.open((tmp_path / REPORT_NAME).as_uri())
        await browser.evaluate(_search("prompt 128"))
        gone = await browser.evaluate(_SETTLED)
        assert gone["prompts"] == []
        assert "run asyncimg report again" in gone["empty"][0]


def test_a_rerun_inside_the_window_is_charted_with_the_earlier_runs_sends(
    tmp_path: Path,
) -> None:
    from asyncimg._batch.manifest import Run, read_runs

    t0 = 1_700_000_000.0
    rate = (20, 60.0)

    def run(start: float, end: float, unfinished: tuple[tuple[float, int], ...] = ()) -> Run:
        return Run(start, end, end - start, rate, {}, 20, 0.0, 0, unfinished)

    first = [Record(f"a{i}", i, "p", {}, "ok", sent=((t0 + i * 0.1, 1),)) for i in range(18)]
    # Run 1 stopped with two on their way; run 2 sent 20 at once, 5 s later.
    second = [Record(f"b{i}", 20 + i, "p", {}, "ok", sent=((t0 + 5 + i * 0.01, 1),))
              for i in range(20)]
    runs = [run(t0, t0 + 3, ((t0 + 2.0, 1), (t0 + 2.1, 1))), run(t0 + 5, t0 + 70)]
    page = render(first + second, runs, None, tmp_path).html
    assert "peak 20</figcaption>" in page  # run 1
    assert "peak 40</figcaption>" in page  # run 2: what the server saw in one window
    line = json.dumps({"started_at": t0, "finished_at": t0 + 3,
                       "unfinished_sent": [{"at": t0 + 2.0, "images": 1}, {"at": "x"}]})
    (tmp_path / "runs.jsonl").write_text(line + "\n")
    assert read_runs(tmp_path)[0].unfinished_sent == ((t0 + 2.0, 1),)


def test_a_rerun_starts_its_limiter_with_the_window_still_open(tmp_path: Path) -> None:
    import time

    from asyncimg._batch.manifest import Manifest

    now = time.time()
    old = {"id": "a", "line": 1, "prompt": "p", "status": "failed",
           "sent": [{"at": now - 100, "images": 1}, {"at": now - 1, "images": 2}]}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(old) + "\n")
    (tmp_path / "runs.jsonl").write_text(json.dumps(
        {"started_at": now - 5, "finished_at": now - 1,
         "unfinished_sent": [{"at": now - 2, "images": 1}]}) + "\n")
    manifest = Manifest(tmp_path, sends_since=now - 60)
    manifest.open()
    try:
        assert sorted(manifest.recent_sends) == [(now - 2, 1), (now - 1, 2)]
        assert manifest.dropped == 1  # the failed line goes; its sends were read first
    finally:
        manifest.close()


_FITS = """(() => {
  const out = [];
  for (const svg of document.querySelectorAll('svg.chart')) {
    const width = svg.viewBox.baseVal.width;
    for (const text of svg.querySelectorAll('text')) {
      const box = text.getBBox();
      if (box.x < -0.5 || box.x + box.width > width + 0.5) out.push(text.textContent);
    }
  }
  const tiles = Object.fromEntries([...document.querySelectorAll('.tile')].map(
    t => [t.querySelector('.k').textContent, t.querySelector('.v').textContent]));
  return {clipped: out, charts: document.querySelectorAll('svg.chart').length, tiles,
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          meta: [...document.querySelectorAll('.meta')].map(p => p.textContent)};
})()"""


def _direct_dir(folder: Path) -> None:
    t0 = 1_700_000_000.0
    lines = [json.dumps({"id": f"i{i}", "line": i, "prompt": "p", "status": "ok",
                         "files": [], "sent": [{"at": t0 + i * 3.0, "images": 1}],
                         "seconds": 1.0}) for i in range(20)]
    (folder / MANIFEST_NAME).write_text("\n".join(lines) + "\n")
    (folder / RUNS_NAME).write_text(json.dumps({
        "started_at": t0, "finished_at": t0 + 60.0, "seconds": 60.0,
        "rate": {"images": 20, "per": 60.0}, "images": 20, "waited": 1.5}) + "\n")


def _batch_api_dir(folder: Path) -> None:
    lines = [json.dumps({"id": f"b{i}", "line": i, "prompt": "p", "status": "ok", "files": [],
                         "seconds": 0.1, "attempts": 1,
                         "finished_at": "2026-01-01T10:01:01.000+00:00"}) for i in range(3)]
    (folder / MANIFEST_NAME).write_text("\n".join(lines) + "\n")
    (folder / "batchapi.json").write_text('{"jobs": []}\n')
    (folder / RUNS_NAME).write_text(json.dumps({
        "route": "batch-api", "started_at": 1_767_261_600.0, "finished_at": 1_767_261_661.0,
        "seconds": 61.0, "rate": None, "images": 3}) + "\n")


@pytest.mark.parametrize(("width", "height"), [(1400, 1000), (390, 844)])
async def test_the_charts_and_tiles_fit_on_a_desktop_and_a_phone(
    chromium: str, tmp_path: Path, width: int, height: int
) -> None:
    direct, batch_api = tmp_path / "direct", tmp_path / "api"
    for folder, make in ((direct, _direct_dir), (batch_api, _batch_api_dir)):
        folder.mkdir()
        make(folder)
        write_report(folder, thumbnails=False)
    async with Browser(chromium, width=width, height=height) as browser:
        await browser.open((direct / REPORT_NAME).as_uri())
        seen = await browser.evaluate(_FITS)
        await browser.screenshot(tmp_path / f"direct-{width}.png")
        assert seen["charts"] == 1
        assert seen["clipped"] == []  # "1 min 00 s" at the right edge too
        assert seen["overflow"] <= 0
        assert seen["tiles"]["images/min"] == "20.0"
        await browser.open((batch_api / REPORT_NAME).as_uri())
        seen = await browser.evaluate(_FITS)
        await browser.screenshot(tmp_path / f"api-{width}.png")
        assert seen["charts"] == 0
        assert seen["tiles"]["wall time"] == "1 min 01 s"
        assert "images/min" not in seen["tiles"]
        assert "waited on the limiter" not in seen["tiles"]
        assert any("sent through the Batch API" in text for text in seen["meta"])
        assert seen["overflow"] <= 0
        assert browser.errors == []


async def test_images_per_minute_is_the_same_in_the_cli_summary_and_the_page(
    emu: Emulator, tmp_path: Path
) -> None:
    from asyncimg import RateLimit

    src = tmp_path / "p.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(6)))
    out = tmp_path / "out"
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(600, 1.0)) as client:
        summary = await run_batch(client, open_text(str(src)), "txt", out,
                                  params={"model": "dall-e-2", "size": "256x256"})
    page = (write_report(out, thumbnails=False)).read_text()
    shown = f'<div class="v">{summary.images_per_minute:,.1f}</div><div class="k">images/min'
    assert shown in page


# -- the gallery in chunks --------------------------------------------------------------


def test_the_page_carries_one_chunk_and_the_others_are_files_of_its_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncimg._batch import report

    monkeypatch.setattr(report, "CHUNK_ITEMS", 10)
    _long_dir(tmp_path, 25)
    built = render(read_records(tmp_path), [], None, tmp_path)
    assert sorted(built.chunks) == [f"{built.build}-1.js", f"{built.build}-2.js"]
    for attribute in ('data-total="25"', 'data-chunk="10"', 'data-chunks="3"'):
        assert attribute in built.html
    assert '"prompt 9"' in built.html
    assert '"prompt 10"' not in built.html
    second = built.chunks[f"{built.build}-2.js"]
    assert second.startswith(f'asyncimgChunk("{built.build}",2,[{{"id":"item20"')
    assert second.count('"id":') == 5
    # The build is the cards' digest: the same cards, the same names.
    assert render(read_records(tmp_path), [], None, tmp_path).build == built.build


def test_the_chunks_of_an_earlier_report_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncimg._batch import report

    monkeypatch.setattr(report, "CHUNK_ITEMS", 10)
    _long_dir(tmp_path, 45)
    write_report(tmp_path, thumbnails=False)
    older = sorted(p.name for p in (tmp_path / CHUNKS_DIR).iterdir())
    assert len(older) == 4
    (tmp_path / CHUNKS_DIR / "notes.txt").write_text("mine")  # not a chunk: left alone
    _long_dir(tmp_path, 22)  # a smaller batch in the same directory
    page = write_report(tmp_path, thumbnails=False).read_text()
    newer = sorted(p.name for p in (tmp_path / CHUNKS_DIR).iterdir() if p.suffix == ".js")
    assert len(newer) == 2
    assert not set(older) & set(newer)
    build = newer[0].split("-")[0]
    assert f'data-build="{build}"' in page
    assert (tmp_path / CHUNKS_DIR / "notes.txt").read_text() == "mine"
    (tmp_path / CHUNKS_DIR / "notes.txt").unlink()
    _long_dir(tmp_path, 5)  # fits in the page: no chunk files, no folder
    write_report(tmp_path, thumbnails=False)
    assert not (tmp_path / CHUNKS_DIR).exists()


def test_a_chunks_symlink_out_of_the_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncimg._batch import report

    monkeypatch.setattr(report, "CHUNK_ITEMS", 10)
    folder = tmp_path / "out"
    folder.mkdir()
    _long_dir(folder, 25)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / CHUNKS_DIR).symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory of its own"):
        write_report(folder, thumbnails=False)
    assert list(elsewhere.iterdir()) == []


def test_a_report_of_a_large_batch_has_a_page_of_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncimg._batch import report

    monkeypatch.setattr(report, "CHUNK_ITEMS", 20)
    sizes = []
    for count in (100, 1000):
        folder = tmp_path / str(count)
        folder.mkdir()
        lines = [json.dumps({
            "id": f"i{i}", "line": i + 1, "prompt": f"prompt {i}", "status": "ok", "files": [],
            "sent": [{"at": 1000.0 + i, "images": 1}], "seconds": 0.5, "cost_usd": 0.02,
            "finished_at": f"2026-01-01T10:{i // 3600 % 60:02d}:{i % 60:02d}.000+00:00",
        }) for i in range(count)]
        (folder / MANIFEST_NAME).write_text("\n".join(lines) + "\n")
        sizes.append(write_report(folder, thumbnails=False).stat().st_size)
    assert sizes[1] < sizes[0] * 1.2  # ten times the items: the charts and one chunk


# -- the thumbnails' cache --------------------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the images Pillow opens."""
    from PIL import Image

    names: list[str] = []
    real = Image.open

    def spy(fp: object, *args: object, **kwargs: object) -> object:
        names.append(Path(str(fp)).name)
        return real(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", spy)
    return names


def _images(folder: Path) -> None:
    from asyncimg.testing._png import make_png

    (folder / "small-0.png").write_bytes(make_png(64, 64, "small"))
    (folder / "big-0.png").write_bytes(make_png(512, 512, "big"))


def test_a_rerun_opens_no_image_it_has_seen(tmp_path: Path, opened: list[str]) -> None:
    _images(tmp_path)
    names = ["small-0.png", "big-0.png"]
    first = make_thumbnails(tmp_path, names)
    assert first == {"small-0.png": "small-0.png", "big-0.png": ".thumbs/big-0.webp"}
    assert sorted(opened) == names[::-1]
    cache = json.loads((tmp_path / THUMBS_DIR / CACHE_NAME).read_text())
    assert cache["images"]["small-0.png"][2] is False
    assert cache["images"]["big-0.png"][2] is True
    opened.clear()
    written = (tmp_path / THUMBS_DIR / CACHE_NAME).stat().st_mtime_ns
    assert make_thumbnails(tmp_path, names) == first
    assert opened == []
    assert (tmp_path / THUMBS_DIR / CACHE_NAME).stat().st_mtime_ns == written  # unchanged


def test_a_replaced_or_deleted_image_or_a_lost_thumbnail_is_seen_again(
    tmp_path: Path, opened: list[str]
) -> None:
    from PIL import Image

    from asyncimg.testing._png import make_png

    _images(tmp_path)
    names = ["small-0.png", "big-0.png"]
    make_thumbnails(tmp_path, names)
    opened.clear()
    # The small image replaced by a large one, the large by a small one (same mtime).
    stamp = (tmp_path / "small-0.png").stat()
    (tmp_path / "small-0.png").write_bytes(make_png(400, 300, "now large"))
    (tmp_path / "big-0.png").write_bytes(make_png(32, 32, "now small"))
    os.utime(tmp_path / "small-0.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    shown = make_thumbnails(tmp_path, names)
    assert shown == {"small-0.png": ".thumbs/small-0.webp", "big-0.png": "big-0.png"}
    assert sorted(opened) == names[::-1]
    with Image.open(tmp_path / THUMBS_DIR / "small-0.webp") as img:
        assert img.size == (256, 192)
    # A thumbnail deleted is made again; the others are not opened.
    opened.clear()
    (tmp_path / THUMBS_DIR / "small-0.webp").unlink()
    assert make_thumbnails(tmp_path, names) == shown
    assert opened == ["small-0.png"]
    # An image deleted leaves the cache.
    (tmp_path / "big-0.png").unlink()
    opened.clear()
    assert make_thumbnails(tmp_path, ["small-0.png"]) == {"small-0.png": ".thumbs/small-0.webp"}
    assert opened == []
    cache = json.loads((tmp_path / THUMBS_DIR / CACHE_NAME).read_text())
    assert list(cache["images"]) == ["small-0.png"]


@pytest.mark.parametrize("planted", [
    b"{not json", b"\x00\xff" * 100, b"[]", b'{"images": {}}',
    b'{"asyncimg_thumbs": 2, "size": 256, "suffix": ".webp", "images": {}}',
    b'{"asyncimg_thumbs": 1, "size": 256, "suffix": ".webp", "images": '
    b'{"big-0.png": [1, 2], "small-0.png": ["x", 1, true], "other.png": 7}}',
    "symlink", "directory",
])
def test_a_corrupt_or_foreign_cache_is_rebuilt(
    tmp_path: Path, opened: list[str], planted: bytes | str
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    _images(folder)
    (folder / THUMBS_DIR).mkdir()
    cache = folder / THUMBS_DIR / CACHE_NAME
    victim = tmp_path / "victim.json"
    victim.write_text('{"asyncimg_thumbs": 1}')
    if planted == "symlink":
        cache.symlink_to(victim)
    elif planted == "directory":
        cache.mkdir()
    else:
        assert isinstance(planted, bytes)
        cache.write_bytes(planted)
    names = ["small-0.png", "big-0.png"]
    expected = {"small-0.png": "small-0.png", "big-0.png": ".thumbs/big-0.webp"}
    assert make_thumbnails(folder, names) == expected
    assert sorted(opened) == names[::-1]  # nothing was believed
    assert victim.read_text() == '{"asyncimg_thumbs": 1}'
    opened.clear()
    assert make_thumbnails(folder, names) == expected
    if planted == "directory":
        assert opened == ["small-0.png"]  # no cache: the thumbnail newer than its image only
    else:
        assert not cache.is_symlink()
        assert opened == []  # rebuilt: the next report trusts it


@pytest.mark.parametrize("block", [3, 4096])
def test_json_lines_reads_blocks_and_passes_over_odd_lines_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    from asyncimg._batch import manifest

    monkeypatch.setattr(manifest, "_JSON_BLOCK", block)

    path = tmp_path / "m.jsonl"
    good = [{"id": f"i{i}"} for i in range(10)]
    lines = [json.dumps(x) for x in good]
    lines[3:3] = ['{"id": "two"}, {"id": "on one line"}', "[1, 2]", "", "{broken", '"text"']
    path.write_text("\n".join(lines) + '\n{"id": "torn"')
    assert list(manifest.json_lines(path)) == good
    path.write_text("".join(json.dumps(x) + "\n" for x in good))
    assert list(manifest.json_lines(path)) == good


def test_a_second_report_opens_no_image_and_writes_the_same_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[str]
) -> None:
    from asyncimg._batch import report

    monkeypatch.setattr(report, "CHUNK_ITEMS", 4)
    _long_dir(tmp_path, 10, failed_every=5)
    _images(tmp_path)
    line = {"id": "big", "line": 11, "prompt": "big", "status": "ok",
            "files": ["big-0.png", "small-0.png"]}
    with (tmp_path / MANIFEST_NAME).open("a") as f:
        f.write(json.dumps(line) + "\n")
    first = write_report(tmp_path).read_text()
    chunks = {p.name: p.read_text() for p in (tmp_path / CHUNKS_DIR).iterdir()}
    assert len(opened) == 10  # eight 64-px images, the small one and the large one
    assert '{"full":"big-0.png","thumb":".thumbs/big-0.webp"}' in "".join(chunks.values())
    opened.clear()
    assert write_report(tmp_path).read_text() == first
    assert {p.name: p.read_text() for p in (tmp_path / CHUNKS_DIR).iterdir()} == chunks
    assert opened == []
