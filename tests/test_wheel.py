"""The wheel built from the tree is what users get: build it, install it into a fresh venv, use it.

The venv has only the wheel and its declared dependencies (no editable checkout on
``sys.path``), so a file missing from the wheel, or an import the core does not
declare, fails here. Package data that must ship is listed in ``MUST_SHIP``.
"""

from __future__ import annotations

import os
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
    "asyncimg/lua/limiter.lua",  # the RedisLimiter's script, read with importlib.resources
    # The report page's templates, read with importlib.resources too.
    "asyncimg/_batch/templates/report.html",
    "asyncimg/_batch/templates/report.css",
    "asyncimg/_batch/templates/report.js",
)

SMOKE = textwrap.dedent(
    """
    import asyncio, importlib.resources, sys

    import asyncimg
    from asyncimg import AsyncImagesClient
    from asyncimg.testing import Emulator

    assert "site-packages" in asyncimg.__file__, asyncimg.__file__
    assert importlib.resources.files("asyncimg").joinpath("py.typed").is_file()
    assert "redis" not in sys.modules  # the extra is not installed, nor needed
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree, built as pip builds it (isolated, from a copy of the sources)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True, env=_clean_env(), timeout=300,
    )
    (built,) = out.glob("asyncimg-*.whl")
    return built


def test_the_wheel_ships_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in MUST_SHIP if name not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert not [n for n in names if n.startswith("tests/")], "tests must not ship"


def test_the_wheel_installed_in_a_fresh_venv_makes_a_call(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(wheel)],
        check=True, env=_clean_env(), timeout=300,
    )
    done = subprocess.run(
        [str(python), "-c", SMOKE], cwd=tmp_path, capture_output=True, text=True,
        env=_clean_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok "), done.stdout
