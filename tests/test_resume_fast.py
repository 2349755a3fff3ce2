"""Resume at speed: a manifest line of the writer's own form read without json.loads (the
same fields as decoding it), the done ids kept compact, files checked by one listing,
kept lines copied in blocks; and a group of images written at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from asyncimg._batch import manifest as manifest_module
from asyncimg._batch.manifest import DoneIds, Manifest, Record, _decoded_fields, _line_fields
from asyncimg._fs import write_files

PARAMS = {"model": "dall-e-2", "size": "256x256", "response_format": "b64_json"}


def _record(item_id: str, **fields: Any) -> Record:
    base: dict[str, Any] = {"line": 3, "prompt": "a fox", "params": PARAMS, "status": "ok",
                            "files": (f"{item_id}-0.png",), "sent": ((1764800000.5, 1),)}
    return Record(id=item_id, **{**base, **fields})


TRICKY = [
    _record("0123456789abcdef"),
    _record("0123456789abcdef-2", files=("a.png", "b, c.png", "ü.webp")),
    _record("0123456789abcdef", prompt='say "status": "ok", "files": ["x"], "error": \\ ok'),
    _record("0123456789abcdef", prompt="ünïcödé \n\t}{ ]["),
    _record("0123456789abcdef", status="failed", files=(),
            error={"type": "APIStatusError", "status": 500, "message": '"status": "ok"'}),
    _record("0123456789abcdef", params={**PARAMS, "extra_body": {"status": "ok"}}),
    _record("my own id", files=("x.png",)),
    _record("0123456789ABCDEF"),
    _record("0123456789abcdef", files=(), sent=()),
]


@pytest.mark.parametrize("record", TRICKY, ids=range(len(TRICKY)))
@pytest.mark.parametrize("want_sends", [False, True])
def test_a_line_reads_as_json_loads_reads_it(record: Record, want_sends: bool) -> None:
    raw = record.to_json().encode()
    assert _line_fields(raw, want_sends) == _decoded_fields(raw, want_sends)
    item_id, ok, files, sent = _line_fields(raw, want_sends) or ("", False, [], None)
    assert (item_id, ok, files) == (record.id, record.ok, list(record.files))
    assert sent == (json.loads(raw)["sent"] if want_sends else None)


@pytest.mark.parametrize("raw", [
    b'{"id": "0123456789abcdef", "line": 1, "prompt": "x", "params": {}, "status": "ok", '
    b'"files": ["a.png"], "error": null}\n',  # no sent: decoded whole
    b'{"id": "0123456789abcdef", "status": "ok", "files": ["a.png"]}\n',  # another order
    b'{"id": 5, "status": "ok"}\n',
    b"[1, 2]\n",
    b"not json\n",
])
def test_any_other_line_is_decoded_whole(raw: bytes) -> None:
    assert _line_fields(raw, True) == _decoded_fields(raw, True)


def test_done_ids_are_a_set_of_strings() -> None:
    done = DoneIds()
    done.add("00000000000000ff")
    done.add("00000000000000ff")
    done.add("an id of its own")
    done.merge(["0000000000000001", "00000000000000ff", "ABCDEF0123456789", "+000000000000001"])
    assert done == {"00000000000000ff", "an id of its own", "0000000000000001",
                    "ABCDEF0123456789", "+000000000000001"}
    assert len(done) == 5
    assert "abcdef0123456789" not in done  # not the upper-case one
    assert "0000000000000002" not in done
    assert 1 not in done


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("in_kernel", [True, False])
def test_compaction_keeps_the_latest_line_of_each_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_kernel: bool
) -> None:
    if not in_kernel:  # kept lines copied by reading and writing
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    for name in ("00000000000000aa-0.png", "00000000000000bb-0.png", "x.png"):
        (tmp_path / name).write_bytes(b"png")
    os.symlink(tmp_path / "x.png", tmp_path / "00000000000000cc-0.png")
    lines = [
        _record("00000000000000aa", status="failed", files=()).to_json().encode(),
        _record("00000000000000bb").to_json().encode(),
        _record("own", files=("x.png",)).to_json().encode(),
        _record("00000000000000aa").to_json().encode(),  # the retry: kept
        _record("own", status="failed", files=()).to_json().encode(),  # latest: a failure
        _record("00000000000000cc").to_json().encode(),  # its file is a symlink
        _record("00000000000000dd").to_json().encode(),  # its file is missing
        b"garbage\n",
        b'{"id": "00000000000000ee", "sta',  # torn
    ]
    _write(tmp_path / "manifest.jsonl", lines)
    manifest = Manifest(tmp_path)
    manifest.open()
    manifest.close()
    assert manifest.done == {"00000000000000aa", "00000000000000bb"}
    assert (manifest.torn, manifest.dropped) == (1, 6)
    assert (tmp_path / "manifest.jsonl").read_bytes() == lines[1] + lines[3]


def test_files_are_checked_by_one_listing_after_the_first_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "_STAT_FIRST", 2)
    ids = [f"{i:016x}" for i in range(8)]
    for item_id in ids[:6]:
        (tmp_path / f"{item_id}-0.png").write_bytes(b"png")
    os.unlink(tmp_path / f"{ids[4]}-0.png")
    os.symlink(tmp_path / f"{ids[0]}-0.png", tmp_path / f"{ids[7]}-0.png")
    (tmp_path / f"{ids[5]}-0.png").unlink()
    (tmp_path / f"{ids[5]}-0.png").mkdir()  # a directory is no file
    _write(tmp_path / "manifest.jsonl", [_record(i).to_json().encode() for i in ids])
    listed: list[str] = []
    real = manifest_module._listing
    monkeypatch.setattr(manifest_module, "_listing",
                        lambda base: listed.append(base) or real(base))
    manifest = Manifest(tmp_path)
    manifest.open()
    manifest.close()
    assert manifest.done == set(ids[:4])
    assert listed == [os.fspath(tmp_path)]  # listed once


def test_a_group_of_files_is_written_in_place(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"old")
    write_files(tmp_path, [("a.png", b"new a"), ("b.png", b"new b")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    assert (tmp_path / "a.png").read_bytes() == b"new a"
    with pytest.raises(OSError, match="would leave"):
        write_files(tmp_path, [("c.png", b"c"), ("../d.png", b"d")])
    (tmp_path / "e.png").mkdir()  # cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        write_files(tmp_path, [("c.png", b"c"), ("e.png", b"e")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png", "e.png"]


def test_the_writers_own_lines_take_the_fast_path() -> None:
    for record in TRICKY[:5] + TRICKY[8:]:
        assert manifest_module._CANONICAL.match(record.to_json().encode()), record
    for record in TRICKY[5:8]:  # an object in params; ids of their own
        assert not manifest_module._CANONICAL.match(record.to_json().encode()), record
