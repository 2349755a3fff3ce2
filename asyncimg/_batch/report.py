"""The static report page of a batch directory: ``asyncimg report DIR`` -> ``DIR/index.html``.

Built from ``manifest.jsonl`` (and ``runs.jsonl`` when the runner wrote one), with
nothing but the standard library (Pillow, when installed, makes the thumbnails):

* the summary: items done and failed, images, wall time, images/min, time waited
  on the limiter, 429s, usage tokens when the server reported them, and the spend
  (the sum of the manifest's ``cost_usd``);
* a rate chart per run (the last five): the images sent in the trailing window of
  the configured rate over the run's time, as inline SVG, with the limit drawn as
  a line; the send times (the manifest's ``sent``, ``runs.jsonl``'s
  ``unfinished_sent``) of every run place each image: a rerun that starts while
  an earlier run's window is open shows both runs' sends, as the server counted them;
* a spend chart beside them: what the done items cost, summed over time (USD);
* a gallery: a card per item, failed items with their error, filters for done and
  failed, a search over the prompts. The items travel as JSON in chunks of
  :data:`CHUNK_ITEMS`: the first inside the page, the others in ``DIR/.report/`` as
  scripts the page adds when it needs them (the next pages; every chunk for a filter
  or a search), so the page, and the time to its first cards, stay the same at
  100,000 items as at 1,000. A few lines of plain JavaScript draw one page of cards
  at a time; images load lazily.

The page, its chunks and the thumbnails in ``DIR/.thumbs/`` (:mod:`.thumbs`): no
network, no CDN, relative links only, so the page works from ``file://`` and when the
directory is moved. The chunks' names carry a digest of the cards (the build): a page
loads only its own, and a report removes an earlier one's. Every text is escaped
(``html.escape`` on the page, ``textContent`` in the script, and ``<``, ``>``, ``&``
escaped inside the JSON).

A manifest written by an older version (no ``sent``, no ``runs.jsonl``) still
renders: the chart then places each image at its finish time minus its duration
and draws no limit line, and says so.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import hashlib
import html
import importlib.resources
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from .._fs import write_atomic
from .manifest import Record, Run, read_records, read_runs
from .route import STATE_NAME
from .runner import images_per_minute
from .thumbs import check_real_directory, make_thumbnails

__all__ = [
    "CHUNKS_DIR",
    "CHUNK_ITEMS",
    "REPORT_NAME",
    "Page",
    "chart_svg",
    "render",
    "spend_svg",
    "wall_seconds",
    "window_peaks",
    "write_report",
]

REPORT_NAME: Final = "index.html"
CHUNKS_DIR: Final = ".report"
CHUNK_ITEMS: Final = 1000
"""Cards per chunk of the gallery's data: the first travels in the page, the others in
``.report/`` and load when the gallery needs them."""
PAGE_SIZE: Final = 60
CHARTED_RUNS: Final = 5
_CHUNK_FILE = re.compile(r"[0-9a-f]{16}-[0-9]+\.js")
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")


# -- the rate chart -------------------------------------------------------------------


def window_peaks(
    sends: Iterable[tuple[float, int]], start: float, end: float, window: float, columns: int
) -> list[int]:
    """The most images sent in any trailing ``window`` seconds, for each of ``columns`` slices.

    Column ``c`` covers ``[start + c*w, start + (c+1)*w)`` with ``w = (end - start) / columns``;
    its value is the highest count of images sent in ``(t - window, t]`` for a ``t`` in it.
    An image sent at ``t`` counts from ``t`` until just before ``t + window``, as in the
    limiter. Pure.
    """
    span = max(end - start, 1e-9)
    width = span / columns
    changes: dict[float, int] = {}
    for at, n in sends:
        changes[at] = changes.get(at, 0) + n
        changes[at + window] = changes.get(at + window, 0) - n
    peaks = [0] * columns
    count = 0
    column = -1  # the columns up to this one hold what was seen so far
    for at in sorted(changes):
        here = min(columns - 1, math.floor((at - start) / width)) if at >= start else -1
        if here > column:
            for c in range(max(column, 0), here):
                peaks[c] = max(peaks[c], count)
            if at > start + here * width:  # the column's start came before this change
                peaks[here] = max(peaks[here], count)
            column = here
        count += changes[at]
        if here >= 0:
            peaks[here] = max(peaks[here], count)
    for c in range(max(column, 0), columns):
        peaks[c] = max(peaks[c], count)
    return peaks


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        digits = 2 if seconds < 1 else 1 if seconds < 10 else 0
        return f"{seconds:.{digits}f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _nice_step(top: float, ticks: int = 4) -> float:
    raw = max(top / ticks, 1e-9)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    factor = next(f for f in (1.0, 2.0, 5.0, 10.0) if raw <= f * magnitude * 1.000001)
    return max(1.0, factor * magnitude)


def chart_svg(
    sends: Sequence[tuple[float, int]],
    start: float,
    end: float,
    rate: tuple[int, float] | None,
    *,
    title: str,
    width: int = 920,
    height: int = 204,
) -> str:
    """An inline SVG: images in the trailing window over ``[start, end]``, the limit as a line.

    ``rate`` is ``(images, per)``; without one, the window is 60 s and no line is drawn.
    ``title`` is its accessible name; the page shows it above, as a caption that wraps
    on a narrow screen (:func:`_figure`). Pure.
    """
    left, right, top, bottom = 48, 16, 14, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    columns = max(1, min(plot_w, 600))
    window = rate[1] if rate else 60.0
    end = max(end, start + 1e-3)
    peaks = window_peaks(sends, start, end, window, columns)
    peak = max(peaks, default=0)
    limit = rate[0] if rate else None
    y_top = max(peak, limit or 0, 1) * 1.15
    step = _nice_step(y_top)

    def y(value: float) -> float:
        return top + plot_h - value / y_top * plot_h

    col_w = plot_w / columns
    path = [f"M{left:.1f},{y(0):.1f}"]
    for c, count in enumerate(peaks):
        if c == 0 or count != peaks[c - 1]:
            path.append(f"H{left + c * col_w:.1f}V{y(count):.1f}")
    path.append(f"H{left + plot_w:.1f}")
    line = "".join(path)
    area = f"{line}V{y(0):.1f}Z"
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg">',
    ]
    tick = 0.0
    while tick <= y_top:
        parts.append(
            f'<line class="grid" x1="{left}" x2="{left + plot_w}" '
            f'y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{tick:g}</text>'
        )
        tick += step
    span = end - start
    digits = 2 if span < 1 else 1 if span < 10 else 0
    for i in range(6):
        x = left + plot_w * i / 5
        at = span * i / 5
        label = f"{at:.{digits}f} s" if span < 60 else _duration(at)
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"  # never past an edge
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 8}" text-anchor="{anchor}">'
            f"{html.escape(label)}</text>"
        )
    parts.append(f'<path class="area" d="{area}"/><path class="series" d="{line}"/>')
    if limit is not None:
        parts.append(
            f'<line class="limit" x1="{left}" x2="{left + plot_w}" '
            f'y1="{y(limit):.1f}" y2="{y(limit):.1f}"/>'
            f'<text class="limit-label" x="{left + plot_w - 4}" y="{y(limit) - 5:.1f}" '
            f'text-anchor="end">limit {limit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def spend_svg(
    costs: Sequence[tuple[float, float]], *, title: str, width: int = 920, height: int = 220
) -> str:
    """An inline SVG: the spend in USD summed over time, from ``(epoch, cost)`` pairs.

    Its size is bounded by ``width``, not by the number of pairs. Pure."""
    left, right, top, bottom = 56, 16, 30, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    points = sorted(costs)
    start, end = points[0][0], max(points[-1][0], points[0][0] + 1e-3)
    total = sum(c for _, c in points)
    y_top = max(total, 1e-6) * 1.15
    step = _nice_step(y_top) if y_top >= 4 else y_top / 4

    def x(at: float) -> float:
        return left + (at - start) / (end - start) * plot_w

    def y(value: float) -> float:
        return top + plot_h - value / y_top * plot_h

    steps: dict[str, str] = {}  # a step per unit of width: the last sum there
    spent = 0.0
    for at, cost in points:
        spent += cost
        steps[f"{x(at):.0f}"] = f"{y(spent):.1f}"
    path = [f"M{left:.1f},{y(0):.1f}", *(f"H{at}V{value}" for at, value in steps.items())]
    path.append(f"H{left + plot_w:.1f}")
    parts = [
        f'<svg class="chart spend-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<text class="title" x="{left}" y="18">{html.escape(title)}</text>',
    ]
    for i in range(5):
        tick = step * i
        if tick > y_top:
            break
        parts.append(
            f'<line class="grid" x1="{left}" x2="{left + plot_w}" '
            f'y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">${tick:.2f}</text>'
        )
    span = end - start
    for i in range(6):
        label = f"{span * i / 5:.1f} s" if span < 60 else _duration(span * i / 5)
        parts.append(
            f'<text class="tick" x="{left + plot_w * i / 5:.1f}" y="{height - 8}" '
            f'text-anchor="middle">{html.escape(label)}</text>'
        )
    parts.append(f'<path class="series" d="{"".join(path)}"/></svg>')
    return "".join(parts)


def _spend(items: Sequence[Record]) -> tuple[float, int, list[tuple[float, float]]]:
    """The done items' summed cost, how many have none, and ``(finished_at, cost)`` pairs."""
    total, unknown, points = 0.0, 0, []
    for item in items:
        if not item.ok:
            continue
        if item.cost_usd is None:
            unknown += 1
            continue
        total += item.cost_usd
        if item.finished_at is not None:
            points.append((item.finished_at, item.cost_usd))
    return total, unknown, points


# -- the page -------------------------------------------------------------------------


def _url(name: str) -> str:
    return name if _URL_SAFE.fullmatch(name) else urllib.parse.quote(name, safe="")


def _files_in(directory: Path) -> frozenset[str]:
    """The names of the files in ``directory`` (a symlink to a file counts, as a link on the
    page follows it): one listing instead of a look-up per image. A name with a directory
    part is never in it, so links never leave the directory."""
    with os.scandir(directory) as entries:
        return frozenset(entry.name for entry in entries if entry.is_file())


def _when(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _rate_text(rate: tuple[int, float] | None) -> str:
    if rate is None:
        return "off"
    images, per = rate
    unit = "min" if per == 60 else f"{per:g} s"
    return f"{images} images / {unit}"


def _usage_totals(items: Iterable[Record]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in items:
        for key in ("input_tokens", "output_tokens", "total_tokens"):
            value = (item.usage or {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    return totals


def wall_seconds(runs: Sequence[Run]) -> float:
    """How long the directory's runs took: a run's own seconds, but runs that overlap in
    time (the shards of one job, side by side) from the first start to the last end."""
    total = 0.0
    group: list[Run] = []
    for run in sorted(runs, key=lambda r: r.started_at):
        if group and run.started_at >= max(r.finished_at for r in group):
            total += _group_seconds(group)
            group = []
        group.append(run)
    return total + (_group_seconds(group) if group else 0.0)


def _group_seconds(group: Sequence[Run]) -> float:
    if len(group) == 1:
        return group[0].seconds
    return max(r.finished_at for r in group) - min(r.started_at for r in group)


def _summary(
    items: Sequence[Record], runs: Sequence[Run], *, batch_api: bool
) -> list[tuple[str, str]]:
    """The tiles. images/min is the CLI summary's (:func:`images_per_minute`); the Batch
    API route's directory has neither it nor a limiter wait: the API set the pace."""
    done = sum(item.ok for item in items)
    images = sum(len(item.files) for item in items if item.ok)
    rate = next((run.rate for run in reversed(runs) if run.route == "direct"), None)
    wall: float | None
    if runs:
        wall = wall_seconds(runs)
        made = sum(run.images for run in runs) or images
        waited = _duration(sum(run.waited for run in runs))
        limited = sum(run.rate_limited for run in runs)
    else:
        times = [t for item in items for t, _ in item.send_times]
        ends = [item.finished_at for item in items if item.finished_at is not None]
        wall = max(ends) - min(times) if times and ends and not batch_api else None
        made, waited = images, "not recorded"
        limited = sum(item.rate_limited for item in items)
    tiles = [
        ("items", f"{len(items):,}"),
        ("done", f"{done:,}"),
        ("failed", f"{len(items) - done:,}"),
        ("images", f"{images:,}"),
        ("wall time", "not recorded" if wall is None else _duration(wall)),
    ]
    if not batch_api:
        tiles += [
            ("images/min", f"{images_per_minute(made, wall, rate):,.1f}" if wall else "-"),
            ("waited on the limiter", waited),
            ("429s", f"{limited:,}"),
        ]
    for key, value in _usage_totals(items).items():
        tiles.append((key.replace("_", " "), f"{value:,}"))
    spent, unknown, _ = _spend(items)
    if spent or unknown:
        more = f" (+{unknown} unknown)" if unknown else ""
        tiles.append(("spend", f"${spent:,.2f}{more}"))
    if len(runs) > 1:
        tiles.append(("runs", str(len(runs))))
    return tiles


_APPROXIMATE = (
    '<p class="meta">approximate: no send times or rate were recorded (a directory of an '
    "older version): each image is placed at its item's finish time less its duration</p>"
)
_BATCH_API = (
    '<p class="meta">sent through the Batch API: the API set the pace, so there is no '
    "rate chart and no images/min</p>"
)


def _charts(items: Sequence[Record], runs: Sequence[Run], *, batch_api: bool) -> list[str]:
    if batch_api:
        return [_BATCH_API]
    runs = [run for run in runs if run.route == "direct"]
    sends = sorted(s for item in items for s in item.send_times)
    if not runs:
        if not sends:
            return []
        ends = [item.finished_at for item in items if item.finished_at is not None]
        end = max([*ends, sends[-1][0]])
        title = "images per 60 s at each item's start (approximate)"
        return [_figure(title, chart_svg(sends, sends[0][0], end, None, title=title)),
                _APPROXIMATE]
    # The directory's sends across runs: a run that starts while an earlier one's
    # window is open is charted with what that one sent (the server counts both).
    sends = sorted([*sends, *(s for run in runs for s in run.unfinished_sent)])
    charts = []
    first = max(0, len(runs) - CHARTED_RUNS)
    for number, run in enumerate(runs[first:], first + 1):
        window = run.rate[1] if run.rate else 60.0
        mine = [s for s in sends if run.started_at - window <= s[0] <= run.finished_at]
        peak = window_peaks(mine, run.started_at, run.finished_at, window, 1)[0]
        title = (
            f"run {number}, {_when(run.started_at)}: images sent in any {window:g} s "
            f"(every run's; rate limit {_rate_text(run.rate)}), peak {peak}"
        )
        charts.append(_figure(
            title, chart_svg(mine, run.started_at, run.finished_at, run.rate, title=title)
        ))
    return charts


def _figure(title: str, svg: str) -> str:
    """A chart with its title as a caption (it wraps; the SVG's own text scales with it)."""
    return (f'<figure class="chart-box"><figcaption>{html.escape(title)}</figcaption>'
            f'<div class="chart-scroll">{svg}</div></figure>')


def _card_data(
    item: Record, shown: Mapping[str, str] | None, files: frozenset[str]
) -> dict[str, Any]:
    card: dict[str, Any] = {"id": item.id, "line": item.line, "prompt": item.prompt}
    if item.params:
        card["params"] = {str(k): str(v) for k, v in item.params.items()}
    if item.ok:
        images = []
        for name in item.files:
            if name not in files:
                images.append({"missing": name})
                continue
            thumb = shown.get(name, name) if shown is not None else name
            if thumb == name:
                images.append({"full": _url(name)})  # shown as it is
            else:
                images.append({"full": _url(name), "thumb": "/".join(map(_url, thumb.split("/")))})
        card["images"] = images
    else:
        error = item.error or {}
        card["error"] = {
            key: str(error[key])
            for key in ("type", "code", "status", "param", "message")
            if error.get(key) is not None
        }
    for key, value in (
        ("revised", item.revised_prompt),
        ("request_id", item.request_id),
        ("attempts", item.attempts),
        ("rate_limited", item.rate_limited or None),
    ):
        if value is not None:
            card[key] = value
    card["seconds"] = round(item.seconds, 2)
    return card


def _script_json(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


@attrs.frozen
class Page:
    """What :func:`render` makes: ``index.html`` and the gallery's other chunks of data.

    ``chunks`` maps a file name of ``.report/`` to its text: a script that hands its
    cards to the page (``asyncimgChunk(build, number, cards)``). The names carry
    ``build``, a digest of every card: a page loads only its own chunks, never those
    of an earlier report.
    """

    html: str
    build: str
    chunks: Mapping[str, str]


def render(
    items: Sequence[Record],
    runs: Sequence[Run],
    shown: Mapping[str, str] | None,
    directory: Path,
    *,
    files: frozenset[str] | None = None,
) -> Page:
    """The page: summary, charts and the gallery's data and script. Pure but for file checks.

    ``shown`` maps an image's file name to the relative path to display (its
    thumbnail); None shows every image itself. ``files`` are the names of the files in
    ``directory`` (listed here when not given). The first :data:`CHUNK_ITEMS` cards
    travel in the page, the others in :attr:`Page.chunks`.
    """
    name = html.escape(directory.resolve().name or str(directory))
    batch_api = all(run.route == "batch-api" for run in runs) if runs else (
        directory / STATE_NAME
    ).is_file()
    tiles = "".join(
        f'<div class="tile"><div class="v">{html.escape(v)}</div>'
        f'<div class="k">{html.escape(k)}</div></div>'
        for k, v in _summary(items, runs, batch_api=batch_api)
    )
    details = ""
    if runs:
        last = runs[-1]
        params = ", ".join(f"{k}={v}" for k, v in last.params.items()) or "server defaults"
        pace = "through the Batch API" if last.route == "batch-api" else (
            f"rate limit {_rate_text(last.rate)}"
        )
        details = (
            f"<p class=\"meta\">last run {html.escape(_when(last.started_at))}, "
            f"{html.escape(pace)}, parameters {html.escape(params)}</p>"
        )
    charts = "".join(_charts(items, runs, batch_api=batch_api)) or (
        '<p class="meta">no images were sent</p>'
    )
    spent, _, points = _spend(items)
    if points:
        charts += spend_svg(points, title=f"spend over time: ${spent:,.2f} in all (USD)")
    if files is None:
        files = _files_in(directory)
    data = [
        _script_json([_card_data(item, shown, files) for item in items[at:at + CHUNK_ITEMS]])
        for at in range(0, max(len(items), 1), CHUNK_ITEMS)
    ]
    digest = hashlib.sha256()
    for text in data:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    build = digest.hexdigest()[:16]
    failed = sum(not item.ok for item in items)
    page = _template("report.html").format(
        title=name,
        details=details,
        tiles=tiles,
        charts=charts,
        all=len(items),
        done=len(items) - failed,
        failed=failed,
        data=data[0],
        page_size=PAGE_SIZE,
        chunk=CHUNK_ITEMS,
        chunks=len(data),
        build=build,
        style=_template("report.css"),
        script=_template("report.js"),
    )
    chunks = {
        f"{build}-{number}.js": f'asyncimgChunk("{build}",{number},{text});\n'
        for number, text in enumerate(data[1:], 1)
    }
    return Page(page, build, chunks)


def write_report(directory: str | os.PathLike[str], *, thumbnails: bool = True) -> Path:
    """Write ``directory/index.html`` (and thumbnails) for a batch directory; returns its path.

    The gallery's cards past the first :data:`CHUNK_ITEMS` go to ``directory/.report/``
    (written before the page; the chunks of an earlier report are removed after it).

    Args:
        directory: the ``-o DIR`` of ``asyncimg batch``.
        thumbnails: make thumbnails with Pillow when it is installed.

    Raises:
        InputError: ``directory`` holds no manifest.
        OSError: the page cannot be written; ``directory/.thumbs`` or
            ``directory/.report`` is not a directory of its own (a symlink).
    """
    folder = Path(directory)
    with _no_cycle_collection():
        return _write_report(folder, thumbnails=thumbnails)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector: a report of 100,000 items makes millions of
    objects and no cycles, and the collector's passes over them took a fifth of its time."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _write_report(folder: Path, *, thumbnails: bool) -> Path:
    items = read_records(folder)
    runs = read_runs(folder)
    files = _files_in(folder)
    shown = None
    if thumbnails:
        names = [n for item in items if item.ok for n in item.files if n in files]
        shown = make_thumbnails(folder, names)
    page = render(items, runs, shown, folder, files=files)
    sidecar = folder / CHUNKS_DIR
    check_real_directory(sidecar)
    for file_name, text in page.chunks.items():
        write_atomic(sidecar / file_name, text.encode("utf-8"), sync=False)
    target = folder / REPORT_NAME
    write_atomic(target, page.html.encode("utf-8"))  # a new temporary file, never a planted one
    _remove_stale_chunks(sidecar, set(page.chunks))
    return target


def _remove_stale_chunks(sidecar: Path, keep: set[str]) -> None:
    """Remove the chunk files of earlier reports from ``sidecar`` (and it, once empty)."""
    try:
        names = os.listdir(sidecar)
    except FileNotFoundError:
        return
    for file_name in names:
        if _CHUNK_FILE.fullmatch(file_name) and file_name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sidecar / file_name)
    if not keep:
        with contextlib.suppress(OSError):
            sidecar.rmdir()


@functools.cache
def _template(name: str) -> str:
    """A file of ``templates/`` (package data, shipped in the wheel like ``lua/``)."""
    return (importlib.resources.files(__package__) / "templates" / name).read_text("utf-8")
