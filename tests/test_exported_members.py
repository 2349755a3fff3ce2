"""The front door: ``asyncimg.__all__`` is complete, sorted, and every name resolves.

Some names load on first use (the blocking client, the batch wing, the ``redis``
extra): they must resolve all the same, and ``import asyncimg`` alone must not
import them. The Batch API's old names still resolve, with a DeprecationWarning.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest

import asyncimg


def test_all_is_sorted() -> None:
    assert asyncimg.__all__ == sorted(asyncimg.__all__)


def test_every_public_name_is_exported_and_resolves() -> None:
    public = {
        name for name, value in vars(asyncimg).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(asyncimg.__all__), public - set(asyncimg.__all__)
    for name in asyncimg.__all__:
        assert getattr(asyncimg, name) is not None, name


def test_exported_classes_and_functions_have_docstrings() -> None:
    for name in asyncimg.__all__:
        value = getattr(asyncimg, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert (getattr(value, "__doc__", None) or "").strip(), name


@pytest.mark.parametrize(
    ("old", "new"),
    [("Batch", "BatchAPIState"), ("BatchJob", "BatchAPIJob"),
     ("BatchResult", "BatchAPIResult"), ("batch_line", "batch_api_line")],
)
def test_the_batch_apis_old_names_still_work_and_warn(old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(asyncimg, old)
    assert value is getattr(asyncimg, new)
    assert old not in asyncimg.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        asyncimg.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_import_asyncimg_stays_light() -> None:
    code = (
        "import sys, asyncimg\n"
        "heavy = [m for m in sys.modules if m.startswith(('asyncimg._batch', 'asyncimg._sync',"
        " 'asyncimg._redis', 'asyncimg._stream', 'asyncimg._cost', 'asyncimg._transport',"
        " 'aiohttp', 'asyncimg.testing',"
        " 'asyncimg.cli', 'redis', 'PIL', 'rich',"
        " 'opentelemetry', 'anyio.from_thread'))]\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
