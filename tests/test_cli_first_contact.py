"""The paths a new user takes (issue 26): mistakes caught before anything is sent.

Every test runs ``python -m asyncimg`` as a subprocess; servers are emulators on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncimg.cli import EXIT_USAGE
from asyncimg.testing import emulator_thread

from .pictures import encode, quadrants

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-first-contact"
DALLE = ["--model", "dall-e-2", "--size", "256x256"]


def _env(**extra: str) -> dict[str, str]:
    drop = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ASYNCIMG_REDIS_URL", "AZURE_OPENAI_ENDPOINT",
            "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION")
    return {k: v for k, v in os.environ.items() if k not in drop} | extra


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        env=env or _env(), timeout=60, check=False,
    )


@pytest.mark.parametrize("command", ["generate", "edit", "variation"])
def test_a_bad_output_is_refused_before_sending(tmp_path: Path, command: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    image = tmp_path / "square.png"
    image.write_bytes(encode(quadrants(64, 64, "RGBA")))
    inputs = {"generate": ["a lantern"], "edit": [str(image), "a hat"],
              "variation": [str(image)]}[command]
    with emulator_thread(api_key=KEY) as emu:
        for target in (afile, afile / "sub"):
            run = _cli(command, *inputs, "-o", str(target), "--base-url", emu.base_url, *DALLE,
                       env=_env(OPENAI_API_KEY=KEY))
            assert run.returncode == EXIT_USAGE, run.stderr
            assert "-o:" in run.stderr
        assert emu.requests() == []  # nothing paid for, nothing lost


def test_batches_of_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    for action in ("status", "cancel"):
        run = _cli("batches", action, str(tmp_path / "nonexistent"))
        assert run.returncode == EXIT_USAGE, run.stderr
        assert "no such directory" in run.stderr


def test_batches_help_lists_only_what_it_uses() -> None:
    helped = _cli("batches", "status", "--help").stdout
    for useless in ("--rate", "--redis", "--limit-name", "--concurrency", "--emulator"):
        assert useless not in helped
    assert "--base-url" in helped


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_with_a_bad_port_is_a_usage_error(port: str) -> None:
    run = _cli("serve", "--port", port)
    assert run.returncode == EXIT_USAGE, run.stderr
    assert "--port" in run.stderr
    assert "Traceback" not in run.stderr
