"""`asyncimg batch` as a new user meets it: mistakes cost nothing, fatal errors stop the run.

Every test runs ``python -m asyncimg`` as a subprocess; servers are emulators on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncimg.cli import EXIT_ABORTED, EXIT_FATAL, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE
from asyncimg.testing import Fault, emulator_thread

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
EMU = ["--emulator", "--model", "dall-e-2", "--size", "256x256"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(extra)
    return env


def _cli(
    *args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None,
    **popen: object,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True,
        text=not isinstance(stdin, bytes), input=stdin, env=env or _env(), timeout=60, **popen,
    )


def _manifest(out: Path) -> list[dict[str, object]]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _prompts(tmp_path: Path, count: int, name: str = "p.txt") -> Path:
    src = tmp_path / name
    src.write_text("".join(f"prompt {i}\n" for i in range(count)))
    return src


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (["--model", "dall-e-2", "--size", "300x300"], "--size"),
        (["-n", "0"], "-n"),
        (["--model", "dall-e-3", "-n", "2"], "-n"),
        (["--model", "dall-e-2", "-n", "4", "--rate", "2/min"], "-n"),
        (["--model", "gpt-image-1", "--format", "url"], "--format"),
    ],
)
def test_a_bad_batch_option_is_a_usage_error(
    tmp_path: Path, options: list[str], flag: str
) -> None:
    src = _prompts(tmp_path, 30)
    out = tmp_path / "out"
    run = _cli("batch", str(src), "-o", str(out), "--emulator", *options)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert f"asyncimg: error: {flag}: " in run.stderr
    assert "FAILED" not in run.stderr
    assert not out.exists()  # nothing written, not even the directory


def test_a_refused_key_stops_the_batch(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 60)
    out = tmp_path / "out"
    with emulator_thread(api_key="sk-right") as emu:
        started = time.monotonic()
        run = _cli(
            "batch", str(src), "-o", str(out), "--base-url", emu.base_url, "--model", "dall-e-2",
            "--rate", "3/min", "--concurrency", "4", env=_env(OPENAI_API_KEY="sk-wrong-key"),
        )
        took = time.monotonic() - started
        sent = len(emu.requests("generate"))
    assert run.returncode == EXIT_FATAL, run.stderr
    assert took < 20  # not a minute per 3 prompts
    assert sent <= 3  # what the limiter had granted; nothing new after the first 401
    assert "OPENAI_API_KEY" in run.stderr
    assert "rerun" in run.stderr
    assert len(_manifest(out)) == sent
    assert "sk-wrong-key" not in run.stderr + run.stdout


def test_generate_with_a_refused_key_exits_fatal(tmp_path: Path) -> None:
    with emulator_thread(api_key="sk-right") as emu:
        run = _cli(
            "generate", "a cat", "-o", str(tmp_path), "--base-url", emu.base_url,
            env=_env(OPENAI_API_KEY="sk-wrong-key"),
        )
    assert run.returncode == EXIT_FATAL, run.stderr
    assert "AuthenticationError" in run.stderr
    assert "check OPENAI_API_KEY" in run.stderr


def test_quota_exhausted_stops_the_batch(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 20)
    out = tmp_path / "out"
    with emulator_thread() as emu:
        emu.add_fault(Fault.status(429, code="insufficient_quota", times=100))
        run = _cli(
            "batch", str(src), "-o", str(out), "--base-url", emu.base_url, "--model", "dall-e-2",
            "--concurrency", "1", env=_env(OPENAI_API_KEY="sk-x"),
        )
        sent = len(emu.requests("generate"))
    assert run.returncode == EXIT_FATAL, run.stderr
    assert sent == 1
    assert "quota" in run.stderr


def test_a_prompts_file_not_utf8_names_the_line(tmp_path: Path) -> None:
    src = tmp_path / "p.txt"
    src.write_bytes(b"a cat\na dog\ncaf\xe9 au lait\n")
    out = tmp_path / "out"
    run = _cli("batch", str(src), "-o", str(out), *EMU)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert "line 3" in run.stderr
    assert "--encoding" in run.stderr
    assert "Traceback" not in run.stderr
    assert _manifest(out) == []
    run = _cli("batch", str(src), "-o", str(out), *EMU, "--encoding", "latin-1")
    assert run.returncode == 0, run.stderr
    assert "café au lait" in {x["prompt"] for x in _manifest(out)}


def test_stdin_not_utf8_stops_at_the_bad_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = _cli("batch", "-", "-o", str(out), *EMU, stdin=b"one\ntwo\n\xff\nthree\n")
    assert run.returncode == EXIT_USAGE, run.stderr
    assert "line 3" in run.stderr.decode()  # type: ignore[attr-defined]
    assert sorted(x["prompt"] for x in _manifest(out)) == ["one", "two"]


def test_bad_paths_are_usage_errors(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 2)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    run = _cli("batch", str(src), "-o", str(a_file), *EMU)
    assert run.returncode == EXIT_USAGE
    assert "-o:" in run.stderr
    assert "is a file" in run.stderr
    run = _cli("batch", str(src), "-o", str(a_file / "sub"), *EMU)
    assert run.returncode == EXIT_USAGE
    assert "-o: cannot create" in run.stderr
    run = _cli("batch", str(tmp_path), "-o", str(tmp_path / "out"), *EMU)
    assert run.returncode == EXIT_USAGE
    assert "is a directory" in run.stderr


def _limit_file_size() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))


def test_a_full_disk_aborts_with_a_summary(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 10)
    out = tmp_path / "out"
    run = _cli(
        "batch", str(src), "-o", str(out), *EMU, "--concurrency", "2",
        preexec_fn=_limit_file_size,
    )
    assert run.returncode == EXIT_ABORTED, run.stderr
    assert "Traceback" not in run.stderr
    assert "ExceptionGroup" not in run.stderr
    assert "summary:" in run.stdout
    assert "cannot write images" in run.stderr
    assert _manifest(out) == []


def _stdin_batch(out: Path) -> subprocess.Popen[bytes]:
    """A batch reading stdin, once its first line ("first") is done; stdin stays open."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "batch", "-", "-o", str(out), *EMU],
        cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"first\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 20
    while not _manifest(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    return proc


def test_stdin_is_read_off_the_event_loop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _stdin_batch(out) as proc:
        # The first item finished while the producer is still silent.
        finished_early = [x["prompt"] for x in _manifest(out)]
        _, stderr = proc.communicate(b"second\n", timeout=30)
    assert finished_early == ["first"]
    assert proc.returncode == 0, stderr
    assert b"reading prompts from stdin" in stderr
    assert len(_manifest(out)) == 2


def test_the_directory_remembers_its_server(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 3)
    out = tmp_path / "out"
    assert _cli("batch", str(src), "-o", str(out), *EMU).returncode == 0
    with emulator_thread() as emu:
        run = _cli(
            "batch", str(src), "-o", str(out), "--base-url", emu.base_url, "--model",
            "dall-e-2", "--size", "256x256", env=_env(OPENAI_API_KEY="sk-x"),
        )
        assert len(emu.requests("generate")) == 0
    assert run.returncode == EXIT_USAGE
    assert "holds results from the emulator" in run.stderr


def test_empty_result_is_a_failed_item(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 1)
    out = tmp_path / "out"
    with emulator_thread() as emu:
        emu.add_fault(Fault.status(200, body={"created": 1, "data": []}))
        args = ["batch", str(src), "-o", str(out), "--base-url", emu.base_url]
        run = _cli(*args, env=_env(OPENAI_API_KEY="sk-x"))
        assert run.returncode == 1, run.stderr
        [line] = _manifest(out)
        assert line["status"] == "failed"
        assert line["error"]["type"] == "EmptyResult"  # type: ignore[index]
        run = _cli(*args, env=_env(OPENAI_API_KEY="sk-x"))  # the rerun tries it again
        assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, EXIT_SIGTERM),
                                                (signal.SIGINT, EXIT_SIGINT)])
def test_a_signal_drains_what_is_finished(tmp_path: Path, signum: int, status: int) -> None:
    src = _prompts(tmp_path, 60)
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), *EMU, "--rate", "off", "--concurrency", "8",
            "--emulator-latency", "0.1"]
    with _start(args) as proc:
        deadline = time.monotonic() + 20
        while len(_manifest(out)) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == status, stderr
    assert "summary:" in stdout
    assert "rerun the same command to resume" in stderr
    done = len(_manifest(out))
    assert 10 <= done < 60
    assert f"[{done}/60]" in stderr  # every item reported finished has its line
    rerun = _cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"batch: {60 - done} items to run ({done} already done)" in rerun.stderr
    lines = _manifest(out)
    assert len(lines) == len({x["id"] for x in lines}) == 60


def test_eta_and_images_per_minute_follow_the_limiter() -> None:
    from asyncimg import RateLimit
    from asyncimg._batch.manifest import Record
    from asyncimg._batch.runner import BatchSummary

    # 50 of 300 done in 4 s at the default 50/min: about five minutes are left, not seconds.
    s = BatchSummary(total=300, rate=RateLimit(50, 60.0), available=0)
    s.started = time.monotonic() - 4.0
    for i in range(50):
        s.count(Record(f"id{i}", i, "p", {}, "ok", files=(f"id{i}-0.png",), seconds=2.0))
    eta = s.eta
    assert eta is not None
    assert 250 * 60 / 50 <= eta <= 250 * 61 / 50 + 3
    assert s.images_per_minute <= 50
    # A finished 19-item run of 0.2 s is not "5909.9 images/min" against 50/min.
    s.elapsed = 0.2
    assert s.images_per_minute <= 50
    # 300 in five minutes: the first window's full budget went at once; 50/min sustained.
    run = BatchSummary(total=300, images=300, elapsed=300.0, rate=RateLimit(50, 60.0))
    assert run.images_per_minute == 50.0
    unlimited = BatchSummary(total=10, images=10, elapsed=2.0)
    assert unlimited.images_per_minute == 300.0


def test_messages_name_the_flag_once(tmp_path: Path) -> None:
    from asyncimg.testing import make_png

    opaque = tmp_path / "lounge.png"
    opaque.write_bytes(make_png(256, 256, "lounge"))
    run = _cli("edit", str(opaque), "add a flamingo", "--emulator", "--model", "dall-e-2")
    assert run.returncode == EXIT_USAGE
    assert "image: image:" not in run.stderr
    assert "asyncimg: error: IMAGE: " in run.stderr
    run = _cli("generate", "a cat", "--emulator", "--model", "gpt-image-1", "--format", "url")
    assert run.returncode == EXIT_USAGE
    assert "asyncimg: error: --format: " in run.stderr
    run = _cli("generate", "a cat", "-o", str(tmp_path))  # no key, the official API
    assert run.returncode == EXIT_USAGE
    assert "set OPENAI_API_KEY" in run.stderr
    assert "api_key=" not in run.stderr


def test_a_second_signal_cancels_what_is_in_flight(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 20)
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), *EMU, "--rate", "off", "--concurrency", "4",
            "--emulator-latency", "30"]
    with _start(args) as proc:
        assert proc.stderr is not None
        assert "items to run" in proc.stderr.readline()
        time.sleep(0.5)  # requests are in flight, answered in 30 s
        proc.send_signal(signal.SIGINT)
        assert "requests in flight (again to cancel them)" in proc.stderr.readline()
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    assert time.monotonic() - started < 10
    assert proc.returncode == EXIT_SIGINT, stderr
    assert "summary:" in stdout
    assert _manifest(out) == []


def test_ctrl_c_while_stdin_is_silent_exits_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _stdin_batch(out) as proc:
        proc.send_signal(signal.SIGINT)  # the producer is silent, stdin still open
        proc.wait(timeout=10)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_SIGINT, stderr
    assert b"Fatal Python error" not in stderr
    assert len(_manifest(out)) == 1


def test_a_closed_progress_stream_does_not_stop_the_batch(tmp_path: Path) -> None:
    src = _prompts(tmp_path, 20)
    out = tmp_path / "out"
    with _start(["batch", str(src), "-o", str(out), *EMU, "--rate", "off"]) as proc:
        assert proc.stderr is not None
        proc.stderr.readline()
        proc.stderr.close()  # `2>&1 | head -1`
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "summary:" in stdout
    assert len(_manifest(out)) == 20


def test_the_exit_statuses_are_in_the_help() -> None:
    for command in ([], ["batch"], ["generate"], ["edit"], ["variation"]):
        text = " ".join(_cli(*command, "--help").stdout.split())
        assert "3 stopped by a fatal error" in text
        assert "the server unreachable" in text
        assert "130 Ctrl-C, 143 SIGTERM" in text
