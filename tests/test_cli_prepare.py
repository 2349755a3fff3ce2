"""`asyncimg prepare`, `edit --mask-box` and `variation --prepare`, run as `python -m asyncimg`."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import ImageChops

from .pictures import CORNERS, corner_colours, decode, encode, quadrants, without_pillow

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        env={**base, **(env or {})}, timeout=60, check=False,
    )


def _photo(tmp_path: Path, width: int = 300, height: int = 200) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(quadrants(width, height), "JPEG", quality=95))
    return path


def test_prepare_writes_a_square_png_beside_the_input(tmp_path: Path) -> None:
    done = _cli("prepare", str(_photo(tmp_path)))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "photo-prepared.png"
    assert done.stdout.strip() == str(out)
    picture = decode(out.read_bytes())
    assert picture.size == (1024, 1024)
    assert picture.mode == "RGBA"


def test_prepare_size_fit_and_output(tmp_path: Path) -> None:
    out = tmp_path / "small.png"
    done = _cli("prepare", str(_photo(tmp_path)), "-o", str(out), "--size", "64", "--fit", "crop")
    assert done.returncode == 0, done.stderr
    picture = decode(out.read_bytes())
    assert picture.size == (64, 64)
    assert corner_colours(picture) == CORNERS


def test_prepare_for_a_model(tmp_path: Path) -> None:
    out = tmp_path / "ready.png"
    done = _cli("prepare", str(_photo(tmp_path)), "--for", "dall-e-2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert decode(out.read_bytes()).size == (512, 512)  # the smallest square holding 300x200
    kept = _cli("prepare", str(_photo(tmp_path)), "--for", "gpt-image-1")
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "photo-prepared.jpg").read_bytes() == _photo(tmp_path).read_bytes()


def test_prepare_usage_errors_name_the_flag(tmp_path: Path) -> None:
    photo = str(_photo(tmp_path))
    for args, flag in [
        (("--for", "dall-e-2", "--size", "256"), "--size"),
        (("--for", "dall-e-3"), "--for"),
        (("-o", photo), "-o"),
        (("--size", "0"), "--size"),
    ]:
        done = _cli("prepare", photo, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert flag in done.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    done = _cli("prepare", str(text))
    assert done.returncode == 2
    assert "IN:" in done.stderr


def _one_gigabyte() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))


def test_prepare_size_is_bounded_before_any_allocation(tmp_path: Path) -> None:
    # Unbounded, --size 100000 asks Pillow for a 40 GB square (the kernel killed it);
    # under a 1 GB address space that would be a MemoryError, not a usage error.
    done = subprocess.run(
        [sys.executable, "-m", "asyncimg", "prepare", str(_photo(tmp_path)), "--size", "100000"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=_one_gigabyte,
    )
    assert done.returncode == 2, done.stderr
    assert "--size" in done.stderr
    assert "4096" in done.stderr
    assert not list(tmp_path.glob("*-prepared*"))


def test_prepare_never_writes_the_wrong_format_nor_over_a_file(tmp_path: Path) -> None:
    photo = str(_photo(tmp_path))
    wrong = _cli("prepare", photo, "-o", str(tmp_path / "out.jpg"))
    assert wrong.returncode == 2, wrong.stderr
    assert "-o:" in wrong.stderr
    assert "out.png" in wrong.stderr  # what to name it
    assert not (tmp_path / "out.jpg").exists()
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"precious")
    for args in (["-o", str(kept)], []):
        first = _cli("prepare", photo, *args)
        assert first.returncode == (2 if args else 0), first.stderr
    again = _cli("prepare", photo)  # the default OUT exists now
    assert again.returncode == 2
    assert "--overwrite" in again.stderr
    assert kept.read_bytes() == b"precious"
    replaced = _cli("prepare", photo, "-o", str(kept), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert decode(kept.read_bytes()).size == (1024, 1024)


def test_prepare_without_pillow_names_the_extra(tmp_path: Path) -> None:
    done = _cli("prepare", str(_photo(tmp_path)), env=without_pillow(tmp_path))
    assert done.returncode == 2
    assert "pip install 'asyncimg[images]'" in done.stderr


def test_edit_with_a_mask_box(tmp_path: Path) -> None:
    source = quadrants(256, 256, "RGBA")
    image = tmp_path / "square.png"
    image.write_bytes(encode(source))
    out = tmp_path / "out"
    done = _cli(
        "edit", str(image), "a hat", "--mask-box", "0,0,128,128", "--emulator",
        "--model", "dall-e-2", "--size", "256x256", "-o", str(out),
    )
    assert done.returncode == 0, done.stderr
    (saved,) = out.iterdir()
    diff = ImageChops.difference(decode(saved.read_bytes()).convert("RGBA"), source)
    assert diff.getbbox(alpha_only=False) == (0, 0, 128, 128)  # painted: the box, only the box


def test_edit_mask_box_errors(tmp_path: Path) -> None:
    image = tmp_path / "square.png"
    image.write_bytes(encode(quadrants(64, 64, "RGBA")))
    for box in ("0,0,65,10", "0,0,a,1", "5,5,5,9"):
        done = _cli("edit", str(image), "a hat", "--mask-box", box, "--emulator")
        assert done.returncode == 2, (box, done.stderr)
        assert "--mask-box" in done.stderr
    both = _cli("edit", str(image), "p", "--mask-box", "0,0,1,1", "--mask", str(image))
    assert both.returncode == 2
    assert "not allowed with" in both.stderr


def test_variation_prepare_fixes_the_input_instead_of_refusing_it(tmp_path: Path) -> None:
    photo = str(_photo(tmp_path))
    common = ("--emulator", "--size", "256x256", "-o", str(tmp_path / "out"))
    refused = _cli("variation", photo, "--model", "dall-e-2", *common)
    assert refused.returncode == 2
    assert "PNG" in refused.stderr
    assert "--prepare makes one from it" in refused.stderr
    done = _cli("variation", photo, "--prepare", *common)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").iterdir())) == 1
