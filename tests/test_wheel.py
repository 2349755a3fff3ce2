"""The wheel built from the tree is what users get: build it, install it into a fresh venv, use it.

The venv has only the wheel, installed without extras, and its declared dependencies
(no editable checkout on ``sys.path``), so a file missing from the wheel, or an import
the core does not declare, fails here. Package data that must ship is listed in
``MUST_SHIP``. The wheel is built with the locked build backend (uv.lock's ``build``
group), and the dependencies are pinned to the versions this environment has from the
lock, so the test does not change with the day's releases.
"""

from __future__ import annotations

import importlib.metadata
import os
import pty
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MUST_SHIP = (
    "asyncimg/py.typed",
    "asyncimg/__init__.py",
    "asyncimg/testing/__init__.py",
    "asyncimg/prices.json",  # the price table, read with importlib.resources
    "asyncimg/lua/limiter.lua",  # the RedisLimiter's script, read with importlib.resources
    # The report page's templates, read with importlib.resources too.
    "asyncimg/_batch/templates/report.html",
    "asyncimg/_batch/templates/report.css",
    "asyncimg/_batch/templates/report.js",
)

SMOKE = textwrap.dedent(
    """
    import asyncio, importlib.resources, importlib.util, sys

    import asyncimg
    from asyncimg import AsyncImagesClient
    from asyncimg.testing import Emulator

    assert "site-packages" in asyncimg.__file__, asyncimg.__file__
    assert importlib.resources.files("asyncimg").joinpath("py.typed").is_file()
    assert "redis" not in sys.modules  # the extra is not installed, nor needed
    # Installed without extras: none of theirs is there.
    assert [n for n in ("rich", "redis", "PIL") if importlib.util.find_spec(n)] == []
    assert asyncimg.RedisLimiter.__name__ == "RedisLimiter"  # its Lua script ships

    async def main() -> None:
        async with Emulator(api_key="sk-wheel") as emu:
            async with AsyncImagesClient(api_key="sk-wheel", base_url=emu.base_url) as client:
                r = await client.generate("a lantern", model="dall-e-2", size="256x256",
                                          response_format="b64_json")
                data = await client.download(r.data[0])
                assert data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"

    asyncio.run(main())
    print("ok", asyncimg.__version__)
    """
)

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def _clean_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _locked_pins() -> str:
    """``name==version`` of every distribution here (the lock's), asyncimg itself aside."""
    pins = {
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"].lower() != "asyncimg"
    }
    return "\n".join(sorted(pins)) + "\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree, built by ``python -m build`` with the locked hatchling."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
         str(ROOT)],
        check=True, env=_clean_env(), timeout=300, stdout=subprocess.DEVNULL,
    )
    (built,) = out.glob("asyncimg-*.whl")
    return built


def test_the_wheel_ships_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in MUST_SHIP if name not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert not [n for n in names if n.startswith("tests/")], "tests must not ship"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed as a user installs it; its ``bin``."""
    root = tmp_path_factory.mktemp("installed")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    pins = root / "pins.txt"
    pins.write_text(_locked_pins(), encoding="utf-8")
    # As a user installs it (pip, no extras), with the dependencies at the lock's versions.
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "-c", str(pins), str(wheel)],
        check=True, env=_clean_env(), timeout=300,
    )
    return env_dir / "bin"


def test_the_wheel_installed_in_a_fresh_venv_makes_a_call(
    installed: Path, tmp_path: Path
) -> None:
    python = installed / "python"
    done = subprocess.run(
        [str(python), "-c", SMOKE], cwd=tmp_path, capture_output=True, text=True,
        env=_clean_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok "), done.stdout


def _in_a_terminal(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr: its status and
    everything it wrote there."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdin=terminal, stdout=terminal, stderr=terminal,
            env={**_clean_env(), "TERM": "xterm", "COLUMNS": "100"}, start_new_session=True,
        )
    finally:
        os.close(terminal)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_the_cli_without_extras_runs_a_batch_in_a_terminal(
    installed: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lantern\na kite\n")
    status, seen = _in_a_terminal(
        [str(installed / "asyncimg"), "batch", str(prompts), "-o", str(tmp_path / "out"),
         "--emulator", "--model", "dall-e-2", "--size", "256x256"],
        tmp_path,
    )
    assert status == 0, seen
    assert "Traceback" not in seen
    assert seen.count("pip install 'asyncimg[cli]'") == 1, seen  # said once
    assert "[2/2]" in seen  # the plain display
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 2
