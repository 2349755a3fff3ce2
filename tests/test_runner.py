"""The batch runner: input formats, the manifest, resume, exactly-once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from asyncimg import AsyncImagesClient
from asyncimg._batch.input import InputError, open_text, read_entries
from asyncimg._batch.manifest import MANIFEST_NAME, Manifest
from asyncimg._batch.runner import run_batch
from asyncimg._fs import _write_temp
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator, Fault

from .conftest import TEST_KEY


def _lines(directory: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (directory / MANIFEST_NAME).read_text().splitlines()]


def test_txt_skips_blank_and_comment_lines() -> None:
    text = "# a comment\nfirst\n\n   \n  second  \nfirst\n"
    entries = list(read_entries(io.StringIO(text), "txt", {"size": "256x256"}))
    assert [(e.line, e.prompt) for e in entries] == [(2, "first"), (5, "second"), (6, "first")]
    # A repeat is another item, with its own stable id.
    assert entries[2].id == entries[0].id + "-2"
    again = list(read_entries(io.StringIO("inserted\n" + text), "txt", {"size": "256x256"}))
    assert {e.id for e in again} >= {e.id for e in entries}
    other = list(read_entries(io.StringIO(text), "txt", {"size": "512x512"}))
    assert entries[0].id != other[0].id


def test_jsonl_entries() -> None:
    text = (
        '{"prompt": "a", "size": "512x512"}\n\n"just a string"\nnot json\n[1]\n{"size": "x"}\n'
    )
    entries = list(read_entries(io.StringIO(text), "jsonl", {}))
    assert entries[0].prompt == "a"
    assert entries[0].params == {"size": "512x512"}
    assert entries[1].prompt == "just a string"
    assert entries[1].problem is None
    assert [e.problem is not None for e in entries] == [False, False, True, True, True]


def test_csv_entries() -> None:
    text = "prompt,size,n\nhello,256x256,2\n,,\nworld,,\n"
    entries = list(read_entries(io.StringIO(text), "csv", {}))
    assert [(e.prompt, dict(e.params)) for e in entries] == [
        ("hello", {"size": "256x256", "n": 2}),
        ("world", {}),
    ]
    with pytest.raises(InputError):
        list(read_entries(io.StringIO("text,size\na,b\n"), "csv", {}))


async def _run(
    base_url: str, path: Path, out: Path, fmt: str = "txt", **kwargs: object
) -> object:
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=base_url, rate_limit=None,
        max_concurrency=4, max_retries=0,
    ) as client:
        return await run_batch(
            client, lambda: open(path, encoding="utf-8"), fmt, out,
            params={"model": "dall-e-2", "size": "256x256"}, **kwargs,  # type: ignore[arg-type]
        )


async def test_manifest_and_resume_after_failure(emu: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text(f"one\ntwo\nthree {CONTENT_POLICY_MARKER}\nfour\n")
    out = tmp_path / "out"
    emu.add_fault(Fault.status(500, times=1))  # one of the four fails (no retries)
    summary = await _run(emu.base_url, src, out)
    assert summary.total == 4
    assert summary.ok == 2
    assert summary.failed == 2
    lines = _lines(out)
    assert len(lines) == 4
    failed = [x for x in lines if x["status"] == "failed"]
    assert {x["error"]["type"] for x in failed} == {"ContentPolicyError", "InternalServerError"}  # type: ignore[index]
    policy = next(x for x in failed if x["error"]["type"] == "ContentPolicyError")  # type: ignore[index]
    assert policy["error"]["code"] == "content_policy_violation"  # type: ignore[index]
    # A failure keeps the request id the server gave it, and every line its parameters.
    assert all(str(x["request_id"]).startswith("req_") for x in failed)
    assert all(x["params"] == {"model": "dall-e-2", "size": "256x256"} for x in lines)
    ok = [x for x in lines if x["status"] == "ok"]
    for x in ok:
        assert x["attempts"] == 1
        assert x["request_id"]
        assert x["seconds"] >= 0
        assert x["line"] in (1, 2, 4)
        for name in x["files"]:  # type: ignore[attr-defined]
            assert (out / name).is_file()
    # Rerun: the two done are skipped, the two failed retried; one still fails.
    before = len(emu.requests("generate"))
    summary = await _run(emu.base_url, src, out)
    assert summary.skipped == 2
    assert summary.ok == 1
    assert summary.failed == 1
    assert len(emu.requests("generate")) - before == 2
    lines = _lines(out)
    assert len(lines) == 4 == len({x["id"] for x in lines})
    # --no-retry-failed: nothing to do.
    summary = await _run(emu.base_url, src, out, retry_failed=False)
    assert summary.total == 0
    assert summary.skipped == 4


async def test_missing_files_and_torn_line_are_redone(emu: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "one"}\n{"prompt": "two", "n": 2}\n{"prompt": "three"}\n')
    out = tmp_path / "out"
    await _run(emu.base_url, src, out, fmt="jsonl")
    lines = _lines(out)
    assert len(lines) == 3
    two = next(x for x in lines if x["prompt"] == "two")
    assert len(two["files"]) == 2  # type: ignore[arg-type]
    (out / lines[0]["files"][0]).unlink()  # type: ignore[index]
    manifest = out / MANIFEST_NAME
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) - 20])  # a torn last line
    _write_temp(out, f"{two['id']}-1", b"junk")  # ours, stale: a write cut short
    (out / ".my-notes.part").write_text("the user's own")  # not ours: kept
    summary = await _run(emu.base_url, src, out, fmt="jsonl")
    assert summary.ok == 2
    assert summary.skipped == 1
    lines = _lines(out)
    assert len(lines) == 3 == len({x["id"] for x in lines})
    assert all(x["status"] == "ok" for x in lines)
    assert [p.name for p in out.glob(".*.part")] == [".my-notes.part"]
    assert len(list(out.glob("*.png"))) == 4


def test_manifest_lock(tmp_path: Path) -> None:
    first = Manifest(tmp_path)
    first.open()
    try:
        with pytest.raises(InputError, match="another"):
            Manifest(tmp_path).open()
    finally:
        first.close()
    second = Manifest(tmp_path)
    second.open()
    second.close()


async def test_runner_counts_waits_and_attempts(tmp_path: Path) -> None:
    from asyncimg import RateLimit

    async with Emulator(api_key=TEST_KEY) as emu:
        emu.add_fault(Fault.status(503, times=1))
        src = tmp_path / "p.txt"
        src.write_text("a\nb\nc\nd\n")
        async with AsyncImagesClient(
            api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(images=2, per=0.3),
            max_concurrency=4,
            max_retries=2,
        ) as client:
            client.retry_policy = type(client.retry_policy)(max_retries=2, initial=0.001,
                                                           maximum=0.002)
            summary = await run_batch(client, lambda: open(src), "txt", tmp_path / "out")  # noqa: SIM115
    assert summary.ok == 4
    assert summary.waited > 0.2
    attempts = sorted(x["attempts"] for x in _lines(tmp_path / "out"))
    assert attempts == [1, 1, 1, 2]


def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    first = Manifest(tmp_path, server="http://a.example/v1")
    first.open()
    first.close()
    with pytest.raises(InputError, match="holds results from http://a"):
        Manifest(tmp_path, server="http://b.example/v1").open()
    again = Manifest(tmp_path, server="http://a.example/v1")
    again.open()  # not "another asyncimg batch is writing": the failed open let go
    again.close()


async def test_the_clients_default_model_is_part_of_the_id(emu: Emulator, tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_text("a lantern\n")
    out = tmp_path / "out"
    for model, ran in (("dall-e-2", 1), ("dall-e-2", 0), ("dall-e-3", 1)):
        async with AsyncImagesClient(
            api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, model=model
        ) as client:
            summary = await run_batch(client, open_text(str(src)), "txt", out)
        assert summary.ok == ran
    assert sorted(x["params"]["model"] for x in _lines(out)) == ["dall-e-2", "dall-e-3"]  # type: ignore[index]


async def test_a_rerun_right_after_a_run_keeps_the_rate(tmp_path: Path) -> None:
    from asyncimg import RateLimit

    rate = RateLimit(4, 0.4, margin=0.05)
    out = tmp_path / "out"
    first, both = tmp_path / "first.txt", tmp_path / "both.txt"
    first.write_text("a\nb\nc\nd\n")
    both.write_text("a\nb\nc\nd\ne\nf\ng\nh\n")
    async with Emulator(api_key=TEST_KEY, images_per_minute=rate) as emu:
        for path in (first, both):  # the second run starts as soon as the first ends
            async with AsyncImagesClient(
                api_key=TEST_KEY, base_url=emu.base_url, rate_limit=rate, max_retries=0,
            ) as client:
                summary = await run_batch(
                    client, open_text(str(path)), "txt", out,
                    params={"model": "dall-e-2", "size": "256x256"},
                )
            assert (summary.ok, summary.failed) == (4, 0)
        assert emu.requests(status=429) == []
        assert emu.max_images_in_window() <= 4


@pytest.mark.parametrize("retry_failed", [True, False])
def test_compaction_keeps_the_latest_line_of_each_id(tmp_path: Path, retry_failed: bool) -> None:
    (tmp_path / "a-0.png").write_bytes(b"png")
    lines = [
        {"id": "a", "status": "failed"},
        {"id": "b", "status": "ok", "files": ["gone.png"]},  # its file is missing: redo
        {"id": "a", "status": "ok", "files": ["a-0.png"]},  # a's latest: kept
        {"id": "c", "status": "failed"},
        {"id": "d", "status": "ok", "files": ["a-0.png"]},
        {"id": "d", "status": "failed"},  # d's latest
        "not json",
    ]
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (tmp_path / MANIFEST_NAME).write_text(text + '{"id": "e", "sta')  # a torn last line
    manifest = Manifest(tmp_path, retry_failed=retry_failed)
    manifest.open()
    manifest.close()
    kept = [json.loads(x) for x in (tmp_path / MANIFEST_NAME).read_text().splitlines()]
    if retry_failed:
        assert manifest.done == {"a"}
        assert [x["id"] for x in kept] == ["a"]
        assert manifest.failed_kept == 0
    else:
        assert manifest.done == {"a", "c", "d"}
        assert [(x["id"], x["status"]) for x in kept] == [
            ("a", "ok"), ("c", "failed"), ("d", "failed")]
        assert manifest.failed_kept == 2
    assert manifest.torn == 1
    assert manifest.dropped == len(lines) + 1 - len(kept) - 1
