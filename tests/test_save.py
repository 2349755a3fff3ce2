"""save(): names never collide, an existing file is never replaced, modes follow the umask."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncimg import AsyncImagesClient, Image, ImagesResponse
from asyncimg.testing import make_png


def response(seed: str, request_id: str | None = None) -> ImagesResponse:
    png = base64.b64encode(make_png(16, 16, seed)).decode()
    return ImagesResponse(created=1_700_000_000, data=(Image(b64_json=png),),
                          request_id=request_id)


@pytest.fixture
def client() -> AsyncImagesClient:
    return AsyncImagesClient(api_key="sk-test", rate_limit=None)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_two_responses_of_the_same_second_without_request_ids_both_survive(
    client: AsyncImagesClient, tmp_path: Path
) -> None:
    first = await client.save(response("one"), tmp_path)
    second = await client.save(response("two"), tmp_path)
    assert first != second
    assert first[0].read_bytes() == make_png(16, 16, "one")
    assert second[0].read_bytes() == make_png(16, 16, "two")


async def test_an_existing_file_is_never_replaced(
    client: AsyncImagesClient, tmp_path: Path
) -> None:
    (tmp_path / "req_1-0.png").write_bytes(b"mine")
    (tmp_path / "req_1-0-1.png").write_bytes(b"mine too")
    (path,) = await client.save(response("one", "req_1"), tmp_path)
    assert path.name == "req_1-0-2.png"
    assert (tmp_path / "req_1-0.png").read_bytes() == b"mine"
    assert (tmp_path / "req_1-0-1.png").read_bytes() == b"mine too"
    assert sorted(p.name for p in os.scandir(tmp_path)) == [  # no temporary file left
        "req_1-0-1.png", "req_1-0-2.png", "req_1-0.png"]


async def test_overwrite_replaces_in_place(client: AsyncImagesClient, tmp_path: Path) -> None:
    (tmp_path / "item-0.png").write_bytes(b"old")
    (path,) = await client.save(response("one"), tmp_path, stem="item", overwrite=True)
    assert path.name == "item-0.png"
    assert path.read_bytes() == make_png(16, 16, "one")


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
async def test_saved_images_honour_the_umask(
    client: AsyncImagesClient, tmp_path: Path, mask: int, mode: int
) -> None:
    os.umask(mask)
    (path,) = await client.save(response("one"), tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
