"""Every script in benchmarks/ runs in its quick mode, so a benchmark that rots fails here.

Each runs as a real subprocess with ``--quick`` (seconds, writes nothing) and must exit 0.
The scripts that compare with the official SDK or other limiters need the ``bench``
dependency group, which ``make test`` installs; without it they are skipped, saying so,
except under CI (``CI=true``), where they fail: CI must run every benchmark.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import find_chromium

pytestmark = pytest.mark.subprocess

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
NEEDS = {"run.py": ("openai",), "streaming.py": ("openai",),
         "throughput.py": ("openai", "aiolimiter"), "shared_limiter.py": ("limits",)}


def test_every_script_is_found() -> None:
    assert {"throughput.py", "run.py", "batch_memory.py", "report.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_quick_mode_runs(script: str) -> None:
    if script == "report.py" and find_chromium() is None:
        pytest.skip("no Chromium on PATH")
    missing = [m for m in NEEDS.get(script, ()) if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"the bench group is not installed ({', '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: make test installs it)")
        pytest.skip(reason)
    results = BENCHMARKS / "RESULTS.md"
    before = results.read_bytes()
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True, text=True, timeout=600, env=env, cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    assert results.read_bytes() == before  # a quick run writes nothing
