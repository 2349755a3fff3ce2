"""Every ```python block of README.md and of docs/**/*.md runs as written, against the emulator.

Conventions for these snippets (keep them, and every snippet passes):

* each ```python block is a complete script: it runs on its own, in a fresh
  ``python`` subprocess, in block order; no top-level ``await`` (use
  ``asyncio.run(main())``) and no names from another block;
* ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` point at an emulator (started by
  this test, expecting that key), so ``AsyncImagesClient()`` and
  ``ImagesClient()`` with no arguments talk to it, as a user's would talk to the
  API; a snippet that starts its own ``Emulator`` is fine too;
* the working directory is a fresh temporary directory holding ``lounge.png``
  (a 1024x1024 RGBA PNG, partly transparent) and ``mask.png`` (its mask, the same
  size): the files a snippet may name as "your image";
* a block whose first line is ``# not run`` is skipped (for fragments only);
* a snippet has 60 seconds; it must not need the network.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncimg.testing import Emulator, emulator_thread, encode_png

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-readme-snippets"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _pages() -> list[Path]:
    """README.md, then every Markdown page of the docs site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _snippets(page: Path) -> list[tuple[str, str]]:
    """The page's runnable blocks, each as ``(where, code)``; ``where`` is ``path:line``."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        code = match.group(1)
        if code.startswith("# not run"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        found.append((f"{page.relative_to(ROOT)}:{line}", code))
    return found


@functools.cache
def _square_png(size: int, hole: bool) -> bytes:
    """An RGBA PNG: opaque grey, with a transparent square in the middle if ``hole``."""
    rows = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            inside = hole and size // 4 <= x < 3 * size // 4 and size // 4 <= y < 3 * size // 4
            row += bytes((128, 128, 128, 0 if inside else 255))
        rows.append(bytes(row))
    return encode_png(size, size, rows, alpha=True)


@pytest.fixture(scope="module")
def readme_emulator() -> Iterator[Emulator]:
    with emulator_thread(api_key=KEY) as emu:
        yield emu


@pytest.mark.parametrize(
    ("where", "code"),
    [pytest.param(where, code, id=where) for page in _pages() for where, code in _snippets(page)],
)
def test_readme_snippet_runs(
    readme_emulator: Emulator, tmp_path: Path, where: str, code: str
) -> None:
    picture = _square_png(1024, hole=True)
    (tmp_path / "lounge.png").write_bytes(picture)
    (tmp_path / "mask.png").write_bytes(picture)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=readme_emulator.base_url, OPENAI_API_KEY=KEY)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"{where}:\n{code}\n{run.stderr}"


def test_the_readme_and_the_guides_have_snippets() -> None:
    assert len(_snippets(ROOT / "README.md")) >= 3
    guides = [page for page in _pages() if "guides" in page.parts and _snippets(page)]
    assert len(guides) >= 10
