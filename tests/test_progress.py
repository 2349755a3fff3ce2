"""The batch progress displays (plain lines and the rich bar), on an injected clock."""

from __future__ import annotations

import io

import pytest

from asyncimg import RateLimit
from asyncimg._batch.manifest import Record
from asyncimg._batch.runner import BatchSummary
from asyncimg.cli import _Countdown, _Plain, _Rich


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _ok(i: int) -> Record:
    return Record(f"id{i}", i, "p", {}, "ok", files=(f"id{i}-0.png",), seconds=1.0)


def test_the_eta_ticks_down_between_items() -> None:
    clock = Clock()
    eta = _Countdown(clock)
    assert eta.left() is None
    eta.anchor(21.4)
    clock.now += 8.0
    assert eta.left() == pytest.approx(13.4)
    clock.now += 60.0
    assert eta.left() == 0.0
    eta.anchor(30.0)
    assert eta.left() == 30.0


def test_plain_lines_show_elapsed_what_is_left_and_a_moving_eta() -> None:
    clock = Clock()
    stream = io.StringIO()
    plain = _Plain(stream, clock)
    one = BatchSummary(total=1)
    plain.start(one)
    assert stream.getvalue() == "batch: 1 item to run\n"
    # 30 images at 20 per 60.6 s, none available now: 90.9 s.
    s = BatchSummary(total=30, rate=RateLimit(20, 60.0), available=0)
    s.started = clock.now
    plain.start(s)
    clock.now += 10.0
    plain.tick(s)
    assert stream.getvalue().splitlines()[-1] == (
        "0/30 done, 0 failed, 30 left, elapsed 10.0s, 0.0 images/min, "
        "waited 0.0s on the rate limit, ETA 1m20s"
    )
    clock.now += 10.0
    plain.tick(s)
    assert stream.getvalue().splitlines()[-1].endswith("elapsed 20.0s, 0.0 images/min, "
                                                       "waited 0.0s on the rate limit, ETA 1m10s")
    plain.message("asyncimg: stopping: nothing new is sent")
    assert stream.getvalue().endswith("\nasyncimg: stopping: nothing new is sent\n")


def test_the_batch_api_route_shows_no_rate_figures() -> None:
    clock = Clock()
    stream = io.StringIO()
    plain = _Plain(stream, clock)
    s = BatchSummary(total=3, route="batch-api")
    s.started = clock.now
    plain.start(s)
    clock.now += 61.0
    plain.stop(s)
    last = stream.getvalue().splitlines()[-1]
    assert last == "0/3 done, 0 failed, 3 left, elapsed 1m01s"


def test_the_rich_bar_prints_messages_on_lines_of_their_own() -> None:
    pytest.importorskip("rich")
    stream = io.StringIO()
    rich = _Rich(stream)
    s = BatchSummary(total=2, rate=RateLimit(20, 60.0))
    rich.start(s)
    rich.message("asyncimg: stopping: nothing new is sent")
    s.count(_ok(1))
    rich.item(_ok(1), s)
    rich.stop(s)
    text = stream.getvalue()
    assert "asyncimg: stopping: nothing new is sent\n" in text
    assert "1 left" in text
    assert "ETA" in text
