"""The asyncimg command: batch end to end, exit statuses, SIGKILL and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncimg import RateLimit
from asyncimg.cli import main, parse_rate

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
EMU = ["--emulator", "--model", "dall-e-2", "--size", "256x256"]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        input=stdin, env=env, timeout=60,
    )


def _manifest(out: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def test_parse_rate() -> None:
    assert parse_rate("50/min") == RateLimit(50, 60.0)
    assert parse_rate("5/s") == RateLimit(5, 1.0)
    assert parse_rate("20/2s") == RateLimit(20, 2.0)
    assert parse_rate("100/h") == RateLimit(100, 3600.0)
    assert parse_rate("50") == RateLimit(50, 60.0)
    assert parse_rate("off") is None
    for bad in ("fast", "5/", "5/x", "/s"):
        with pytest.raises(ValueError, match="not a rate"):
            parse_rate(bad)


def test_examples_batch_exit_1_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _cli("batch", "examples/prompts.txt", "-o", str(out), *EMU)
    assert run.returncode == 1, run.stderr
    # Not a terminal: plain progress lines, then the summary with the failures.
    assert "batch: 19 items to run" in run.stderr
    assert "[19/19]" in run.stderr
    assert "FAILED" in run.stderr
    assert "summary:" in run.stdout
    assert "2 failed:" in run.stdout
    assert "ContentPolicyError" in run.stdout
    assert "ValidationError" in run.stdout
    lines = _manifest(out)
    assert len(lines) == 19
    assert sum(x["status"] == "ok" for x in lines) == 17
    assert len(list(out.glob("*.png"))) == 17
    again = _cli("batch", "examples/prompts.txt", "-o", str(out), *EMU, "--no-retry-failed", "-q")
    # Failed items kept, not retried, are still failed: reported, exit 1.
    assert again.returncode == 1, again.stderr
    assert again.stdout == ""
    assert "2 failed in an earlier run, not retried" in again.stderr
    assert len(_manifest(out)) == 19


def test_formats_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "size": "512x512"}\n')
    (tmp_path / "p.csv").write_text("prompt,size\nc,256x256\nd,512x512\n")
    for name in ("p.jsonl", "p.csv"):
        run = _cli("batch", str(tmp_path / name), "-o", str(tmp_path / name[2:]), *EMU)
        assert run.returncode == 0, run.stderr
        assert len(_manifest(tmp_path / name[2:])) == 2
    run = _cli("batch", "-", "-o", str(tmp_path / "stdin"), *EMU, stdin="e\nf\n\ng\n")
    assert run.returncode == 0, run.stderr
    assert len(_manifest(tmp_path / "stdin")) == 3


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["batch", "x.txt"])  # no -o
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["batch", "x.txt", "-o", "out", "--rate", "fast"])
    assert info.value.code == 2
    assert main(["batch", str(tmp_path / "missing.txt"), "-o", str(tmp_path)]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    assert main(["batch", str(bad), "-o", str(tmp_path / "o"), "--emulator"]) == 2
    assert "prompt" in capsys.readouterr().err


def test_generate_command(tmp_path: Path) -> None:
    run = _cli("generate", "a cat", "-o", str(tmp_path), *EMU, "--format", "url")
    assert run.returncode == 0, run.stderr
    paths = run.stdout.split()
    assert len(paths) == 1
    assert Path(paths[0]).is_file()
    run = _cli("generate", "x" * 1001, *EMU)
    assert run.returncode == 2
    assert "prompt" in run.stderr
    run = _cli("generate", "forbidden-content", "-o", str(tmp_path), *EMU)
    assert run.returncode == 1
    assert "ContentPolicyError" in run.stderr


def test_no_key_is_a_usage_error(tmp_path: Path) -> None:
    run = _cli("generate", "a cat", "-o", str(tmp_path))
    assert run.returncode == 2
    assert "API key" in run.stderr


def test_sigkill_and_rerun_is_exactly_once(tmp_path: Path) -> None:
    prompts = [f"prompt number {i}" for i in range(40)]
    src = tmp_path / "p.txt"
    src.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), *EMU, "--rate", "off", "--concurrency", "8", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    for delay in (0.6, 0.9):
        proc = subprocess.Popen(
            # 0.2 s an answer: the url downloads no longer wait it too (issue 12).
            [sys.executable, "-m", "asyncimg", *args, "--emulator-latency", "0.2"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    run = _cli(*args)
    assert run.returncode == 0, run.stderr
    lines = _manifest(out)
    assert sorted(x["prompt"] for x in lines) == sorted(prompts)
    assert len({x["id"] for x in lines}) == 40
    assert all(x["status"] == "ok" for x in lines)
    images = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert images == sorted(f for x in lines for f in x["files"])  # type: ignore[attr-defined]
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_generate_and_edit_stream_their_partials_then_the_final(tmp_path: Path) -> None:
    gpt = ["--emulator", "--model", "gpt-image-1", "--size", "1024x1024"]
    run = _cli("generate", "a lantern", *gpt, "--stream", "--partial-images", "2",
               "-o", str(tmp_path / "gen"))
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in (tmp_path / "gen").iterdir())
    stem = names[0].rsplit("-", 1)[0]
    assert names == [f"{stem}-0.png", f"{stem}-partial-0.png", f"{stem}-partial-1.png"]
    assert run.stdout.split() == [str(tmp_path / "gen" / f"{stem}-0.png")]
    assert "partial 1/2" in run.stderr
    assert "partial 2/2" in run.stderr
    assert run.stderr.index("partial 2/2") < run.stderr.index("completed")

    image = tmp_path / "in.png"
    from asyncimg.testing import make_png

    image.write_bytes(make_png(64, 64, "in"))
    run = _cli("edit", str(image), "add a moon", *gpt, "--stream", "--partial-images", "1",
               "-o", str(tmp_path / "edit"))
    assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "edit").iterdir())) == 2


def test_stream_flags_are_checked_before_sending(tmp_path: Path) -> None:
    run = _cli("generate", "a", "--emulator", "--partial-images", "2", "-o", str(tmp_path))
    assert run.returncode == 2
    assert "--partial-images needs --stream" in run.stderr
    run = _cli("generate", "a", *EMU, "--stream", "-o", str(tmp_path))
    assert run.returncode == 2
    assert "stream" in run.stderr
    run = _cli("generate", "a", "--emulator", "--model", "gpt-image-1", "--stream",
               "--partial-images", "5", "-o", str(tmp_path))
    assert run.returncode == 2
    assert "partial_images" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_sdk_streams_from_asyncimg_serve(tmp_path: Path) -> None:
    import openai

    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "serve", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split(" on ", 1)[1].split()[0]
        with openai.OpenAI(base_url=base_url, api_key="sk-any", max_retries=0) as sdk:
            events = list(sdk.images.generate(
                prompt="a lantern", model="gpt-image-1", stream=True, partial_images=1
            ))
            assert [e.type for e in events] == [
                "image_generation.partial_image", "image_generation.completed"
            ]
            from asyncimg.testing import make_png

            edits = sdk.images.edit(
                image=("in.png", make_png(32, 32, "in"), "image/png"), prompt="a moon",
                model="gpt-image-1", stream=True,
            )
            assert [e.type for e in edits] == ["image_edit.completed"]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_each_partial_is_written_as_it_arrives(tmp_path: Path) -> None:
    import asyncio

    from asyncimg.testing import Emulator, Fault

    out = tmp_path / "out"
    async with Emulator() as emu:
        emu.add_fault(Fault.trickle(0.4))  # 3 events, 0.4 s apart
        env = {**os.environ, "OPENAI_API_KEY": "sk-any"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncimg", "generate", "a lantern", "--base-url",
            emu.base_url, "--model", "gpt-image-1", "--stream", "--partial-images", "2",
            "-o", str(out), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(1500):  # up to 30 s for the interpreter to start
            if list(out.glob("*-partial-0.png")):
                break
            await asyncio.sleep(0.02)
        seen = sorted(p.name.split("-", 1)[1] for p in out.glob("*.png"))
        assert await proc.wait() == 0
    assert seen == ["partial-0.png"], "the first partial is on disk before the rest arrive"
    assert len(list(out.glob("*.png"))) == 3


def test_todays_flags_gif_svg_markup(tmp_path: Path) -> None:
    from asyncimg.testing import make_png

    model = ["--emulator", "--model", "gpt-image-2.5-sunburst"]
    run = _cli(
        "generate", "a top", "-o", str(tmp_path / "gif"), *model, "--output-format", "gif",
        "--frame-count", "3", "--frame-duration-ms", "150", "--complexity", "low",
        "--quality", "xhigh", "--safety-identifier", "h-1",
    )
    assert run.returncode == 0, run.stderr
    (gif,) = (Path(p) for p in run.stdout.split())
    assert gif.suffix == ".gif"
    assert gif.read_bytes().startswith(b"GIF89a")
    run = _cli(
        "generate", "a logo", "-o", str(tmp_path / "svg"), *model, "--output-format", "svg",
        "--svg-model", "gpt-5.5", "--svg-effort", "low",
    )
    assert run.returncode == 0, run.stderr
    (svg,) = (Path(p) for p in run.stdout.split())
    assert svg.suffix == ".svg"
    assert b"<svg" in svg.read_bytes()
    image, markup = tmp_path / "in.png", tmp_path / "markup.png"
    image.write_bytes(make_png(64, 64, "in"))
    markup.write_bytes(make_png(64, 64, "arrows", alpha=True))
    run = _cli("edit", str(image), "follow", "-o", str(tmp_path / "e"), *model,
               "--markup", str(markup))
    assert run.returncode == 0, run.stderr
    run = _cli("edit", str(image), "x", *model, "--markup", str(markup), "--mask", str(markup))
    assert run.returncode == 2
    assert "not allowed with" in run.stderr
    run = _cli("generate", "a top", *model, "--output-format", "gif", "--frame-count", "40")
    assert run.returncode == 2
    assert "frame_count" in run.stderr
