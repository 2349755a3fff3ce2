"""``asyncimg batch --shard K/N``: one input on N processes, one budget, one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asyncimg._batch.input import InputError, Shard, read_entries, shard_from_env
from asyncimg._batch.manifest import Manifest, Run, read_records, read_runs
from asyncimg._batch.report import wall_seconds
from asyncimg.testing import emulator_thread

from ._redis_server import running_redis

ROOT = Path(__file__).resolve().parent.parent
# The server allows 10 images per 2 s; the shards ask for 10 per 2.5 s: the extra 0.5 s
# covers the time from a grant to the server's reading of the request on a loaded machine
# (the default margin, 1 % of the window, is 20 ms; see tests/test_redis_processes.py).
RATE = "10/2.5s"


def _ids(count: int) -> list[str]:
    lines = [f"a lantern number {i}" for i in range(count)]
    return [e.id for e in read_entries(lines, "txt", {"model": "dall-e-2"})]


def test_the_shards_of_an_input_are_disjoint_and_cover_it() -> None:
    ids = _ids(300)
    parts = [[i for i in ids if Shard(k, 3).holds(i)] for k in (1, 2, 3)]
    assert sorted(i for part in parts for i in part) == sorted(ids)
    assert all(60 < len(part) < 140 for part in parts)  # a hash spreads them


def test_a_shard_is_chosen_by_item_id_not_by_line() -> None:
    ids = _ids(50)
    moved = [e.id for e in read_entries(
        ["a new first line", *[f"a lantern number {i}" for i in range(50)]],
        "txt", {"model": "dall-e-2"},
    )][1:]
    assert moved == ids
    assert [Shard(2, 5).holds(i) for i in moved] == [Shard(2, 5).holds(i) for i in ids]


@pytest.mark.parametrize(
    ("text", "shard"), [("2/5", Shard(2, 5)), (" 1 / 1 ", Shard(1, 1)), ("5/5", Shard(5, 5))]
)
def test_shard_parses_k_of_n(text: str, shard: Shard) -> None:
    assert Shard.parse(text) == shard


@pytest.mark.parametrize("text", ["0/5", "6/5", "2", "a/b", "1/0", "-1/3"])
def test_shard_refuses_what_is_not_k_of_n(text: str) -> None:
    with pytest.raises(ValueError, match="K"):
        Shard.parse(text)


@pytest.mark.parametrize(
    ("environ", "count", "shard"),
    [
        ({"JOB_COMPLETION_INDEX": "0"}, 3, Shard(1, 3)),
        ({"JOB_COMPLETION_INDEX": "2"}, 3, Shard(3, 3)),
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1",
          "SLURM_ARRAY_TASK_COUNT": "5"}, None, Shard(4, 5)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, None, Shard(1, 2)),
    ],
)
def test_the_shard_comes_from_the_job_array(
    environ: dict[str, str], count: int | None, shard: Shard
) -> None:
    assert shard_from_env(environ, count) == shard


@pytest.mark.parametrize(
    ("environ", "count", "match"),
    [
        ({}, 3, "neither"),
        ({"JOB_COMPLETION_INDEX": "0"}, None, "number of shards"),
        ({"JOB_COMPLETION_INDEX": "3"}, 3, "outside"),
        ({"SLURM_ARRAY_TASK_ID": "x"}, 2, "whole number"),
    ],
)
def test_the_job_array_refuses_what_it_cannot_place(
    environ: dict[str, str], count: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        shard_from_env(environ, count)


def _timeline(entries: list[Any]) -> str:
    start = min(e.time for e in entries)
    ordered = sorted(entries, key=lambda e: e.time)
    return " ".join(f"{e.time - start:.3f}:{e.status}" for e in ordered)


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ASYNCIMG_REDIS_URL")
            and not k.startswith(("SLURM_", "JOB_COMPLETION"))}
    return base | {"OPENAI_API_KEY": "sk-test"} | extra


def _shard_cmd(prompts: Path, out: Path, base_url: str, redis_url: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "asyncimg", "batch", str(prompts), "-o", str(out),
            "--base-url", base_url, "--model", "dall-e-2", "--size", "256x256",
            "--rate", RATE, "--redis", redis_url, "--limit-name", "shards", *flags]


@pytest.mark.subprocess
def test_three_shard_processes_share_one_directory_and_one_budget(tmp_path: Path) -> None:
    count = 30
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a lantern number {i}\n" for i in range(count)))
    out = tmp_path / "out"
    with running_redis() as redis, emulator_thread(images_per_minute=(10, 2.0)) as emu:
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                _shard_cmd(prompts, out, emu.base_url, redis.url, "-q", *flags), cwd=ROOT,
                env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for flags, env in [
                (("--shard", "1/3"), {}),
                (("--shard-from-env", "3"), {"JOB_COMPLETION_INDEX": "1"}),
                (("--shard-from-env",), {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                                         "SLURM_ARRAY_TASK_COUNT": "3"}),
            ]
        ]
        results = [p.communicate(timeout=120) for p in procs]
        took = time.monotonic() - started
        assert [p.returncode for p in procs] == [0, 0, 0], results
        generated = emu.requests("generate")
        refused = emu.requests("generate", status=429)
        fullest = emu.max_images_in_window()
        arrivals = [at for at, _ in emu.arrivals]
        # A rerun of any shard resumes it: nothing left to send.
        again = subprocess.run(
            _shard_cmd(prompts, out, emu.base_url, redis.url, "--shard", "2/3"),
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
        )
        assert again.returncode == 0, again.stderr
        assert "manifest-2of3.jsonl" in again.stdout
        assert "30 succeeded, 0 failed" in again.stdout  # the whole job, from one shard
        assert len(emu.requests("generate")) == len(generated)
    assert not refused, _timeline(generated)  # one budget: the server never had to say no
    assert len(generated) == count  # every prompt exactly once, across the shards
    assert fullest <= 10
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("manifest")] == [
        "manifest-1of3.jsonl", "manifest-2of3.jsonl", "manifest-3of3.jsonl"
    ]
    records = read_records(out)
    assert len(records) == count
    assert all(r.ok for r in records)
    assert {r.prompt for r in records} == {f"a lantern number {i}" for i in range(count)}
    runs = read_runs(out)
    assert {json.loads(line)["shard"] for p in out.glob("runs-*.jsonl")
            for line in p.read_text().splitlines()} == {"1of3", "2of3", "3of3"}
    assert len(runs) == 4
    # 10 per 2.5 s: 30 images need at least 5 s (the first 10 at once).
    assert took >= 5.0
    report = subprocess.run(
        [sys.executable, "-m", "asyncimg", "report", str(out), "--no-thumbnails"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert report.returncode == 0, report.stderr
    page = (out / "index.html").read_text()
    assert all(r.id in page for r in records)
    span = max(arrivals) - min(arrivals)
    print(f"3 shards x {count} prompts: {took:.1f} s in all, sent over {span:.2f} s "
          f"(utilisation {count / (10 * (span + 2.0) / 2.0):.0%} of 10 per 2 s), "
          f"fullest window {fullest}/10")


def _line(item_id: str, status: str = "ok", files: tuple[str, ...] = (), line: int = 1,
          finished: str = "2026-12-04T10:00:00+00:00") -> str:
    return json.dumps({"id": item_id, "line": line, "prompt": item_id, "status": status,
                       "files": list(files), "finished_at": finished}) + "\n"


def _id_in(shard: Shard, start: int = 0) -> str:
    return next(f"{n:016x}" for n in range(start, start + 10_000) if shard.holds(f"{n:016x}"))


def test_two_shards_hold_one_directory_at_once_but_one_shard_only_once(tmp_path: Path) -> None:
    first = Manifest(tmp_path, shard=Shard(1, 2))
    second = Manifest(tmp_path, shard=Shard(2, 2))
    again = Manifest(tmp_path, shard=Shard(1, 2))
    first.open()
    try:
        second.open()  # no lock fight between shards
        second.close()
        with pytest.raises(InputError, match="another asyncimg batch"):
            again.open()
    finally:
        first.close()
    assert first.path.name == "manifest-1of2.jsonl"


def test_a_shard_cleans_its_own_leftovers_not_anothers_being_written(tmp_path: Path) -> None:
    mine, theirs = _id_in(Shard(1, 2)), _id_in(Shard(2, 2))
    (tmp_path / f".{mine}-0.abcd.part").write_bytes(b"x")
    (tmp_path / f".{theirs}-0.abcd.part").write_bytes(b"x")
    manifest = Manifest(tmp_path, shard=Shard(1, 2))
    manifest.open()
    manifest.close()
    assert sorted(p.name for p in tmp_path.glob(".*.part")) == [f".{theirs}-0.abcd.part"]


def test_what_another_manifest_of_the_directory_holds_is_done(tmp_path: Path) -> None:
    (tmp_path / "a-0.png").write_bytes(b"png")
    (tmp_path / "manifest.jsonl").write_text(
        _line("a", files=("a-0.png",)) + _line("b", "failed") + _line("c", files=("gone.png",))
    )
    manifest = Manifest(tmp_path, shard=Shard(1, 3))
    manifest.open()
    manifest.close()
    assert manifest.done == {"a"}  # failed or missing its files: run again


def test_read_records_reads_every_shard_as_one_job(tmp_path: Path) -> None:
    (tmp_path / "a-0.png").write_bytes(b"png")
    (tmp_path / "manifest-1of2.jsonl").write_text(_line("a", files=("a-0.png",), line=2))
    (tmp_path / "manifest-2of2.jsonl").write_text(_line("b", "failed", line=1))
    # Sharded another way later: b done there, a failed there earlier than its success.
    (tmp_path / "manifest-1of3.jsonl").write_text(
        _line("b", files=("b-0.png",), line=1, finished="2026-12-04T11:00:00+00:00")
        + _line("a", "failed", line=2, finished="2026-12-04T09:00:00+00:00")
    )
    (tmp_path / "runs-1of2.jsonl").write_text(json.dumps(
        {"started_at": 1.0, "finished_at": 2.0, "shard": "1of2"}) + "\n")
    (tmp_path / "runs-2of2.jsonl").write_text(json.dumps(
        {"started_at": 0.5, "finished_at": 3.0, "shard": "2of2"}) + "\n")
    records = read_records(tmp_path)
    assert [(r.id, r.status) for r in records] == [("b", "ok"), ("a", "ok")]
    assert [run.started_at for run in read_runs(tmp_path)] == [0.5, 1.0]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--shard", "4/3"], {}, "--shard: "),
        (["--shard", "1/2", "--shard-from-env", "2"], {}, "give one"),
        (["--shard-from-env", "3"], {}, "--shard-from-env: neither"),
        (["--shard", "1/2", "--via", "batch-api"], {}, "--via direct"),
    ],
)
def test_shard_usage_errors_send_nothing(
    flags: list[str], env: dict[str, str], message: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asyncimg.cli import main

    for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lantern\n")
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "-o", str(out), "--emulator", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_shard_runs_only_its_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from asyncimg.cli import main

    lines = [f"a lantern number {i}" for i in range(12)]
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"{line}\n" for line in lines))
    out = tmp_path / "out"
    for k in (1, 2):
        assert main(["batch", str(prompts), "-o", str(out), "--emulator", "--model",
                     "dall-e-2", "--size", "256x256", "--rate", "off", "-q",
                     "--shard", f"{k}/2"]) == 0
        ids = {r.id for r in read_records(out)}
        expected = [e.id for e in read_entries(lines, "txt", {"model": "dall-e-2",
                                                              "size": "256x256"})]
        assert ids == {i for i in expected if any(Shard(j, 2).holds(i) for j in range(1, k + 1))}
    assert len(read_records(out)) == 12


def _run(start: float, end: float) -> Run:
    return Run(started_at=start, finished_at=end, seconds=end - start, rate=None, params={},
               images=0, waited=0.0, rate_limited=0)


def test_the_wall_time_of_shards_side_by_side_is_not_their_sum() -> None:
    assert wall_seconds([_run(0, 10), _run(1, 12), _run(2, 11)]) == 12  # three shards
    assert wall_seconds([_run(0, 10), _run(20, 25)]) == 15  # one run, then a rerun
    assert wall_seconds([_run(20, 25), _run(0, 10), _run(5, 12)]) == 17
    assert wall_seconds([]) == 0


def test_a_dry_run_of_a_shard_plans_its_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from asyncimg.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"a lantern number {i}\n" for i in range(180)))
    planned = []
    for k in (1, 2, 3):
        assert main(["batch", str(prompts), "-o", str(tmp_path / "out"), "--dry-run",
                     "--model", "dall-e-2", "--size", "256x256", "--shard", f"{k}/3"]) == 0
        planned.append(capsys.readouterr().out)
    assert [line for text in planned for line in text.splitlines()
            if "to run:" in line] == [f"items to run: {n}" for n in (59, 65, 56)], planned
