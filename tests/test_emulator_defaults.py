"""The emulator as the real thing: the default model's rules, bounded memory, `serve` options."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from asyncimg import AsyncImagesClient, BadRequestError
from asyncimg.testing import Emulator, make_png


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "300x300"}, "size"),
        ({"n": 11}, "n"),
        ({"prompt": "x" * 3000}, "prompt"),
    ],
)
async def test_a_generation_without_model_gets_dall_e_2_rules(
    client: AsyncImagesClient, kwargs: dict[str, Any], param: str
) -> None:
    prompt = kwargs.pop("prompt", "a cat")
    with pytest.raises(BadRequestError) as info:
        await client.generate(prompt, **kwargs)
    assert info.value.param == param
    assert "dall-e-2" in info.value.message


async def test_a_variation_without_model_gets_dall_e_2_rules(client: AsyncImagesClient) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.create_variation(make_png(300, 200, "photo"))
    assert info.value.param == "image"
    square = await client.create_variation(make_png(256, 256, "photo"), size="256x256")
    assert len(square.data) == 1


async def test_journal_arrivals_and_urls_are_bounded() -> None:
    async with Emulator(journal_size=20, max_urls=20) as emu, AsyncImagesClient(
        api_key="sk-x", base_url=emu.base_url, rate_limit=None, model="dall-e-2"
    ) as client:
        first = await client.generate("first", size="256x256", response_format="url")
        for i in range(60):
            last = await client.generate(f"p{i}", size="256x256", response_format="url")
        assert len(emu.journal) == 20
        assert 20 <= len(emu.arrivals) < 40
        assert len(emu._blobs) == 20
        assert (await client.download(last.data[0]))[:4] == b"\x89PNG"
        from asyncimg import NotFoundError

        with pytest.raises(NotFoundError):  # the oldest url was forgotten
            await client.download(first.data[0])


def _options(*command: str) -> set[str]:
    text = subprocess.run(
        [sys.executable, "-m", *command, "--help"], capture_output=True, text=True, check=True
    ).stdout
    return {word.rstrip(",") for word in text.split() if word.startswith("--")} - {"--help"}


def test_serve_and_python_m_asyncimg_testing_take_the_same_options() -> None:
    serve = _options("asyncimg", "serve")
    assert serve == _options("asyncimg.testing")
    assert {"--url-ttl", "--journal-size", "--max-urls", "--images-per-minute"} <= serve


def test_serve_prints_both_ports() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
        finally:
            proc.terminate()  # SIGTERM stops it cleanly
            proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "listening on http://127.0.0.1:" in line
    assert "url results on http://127.0.0.1:" in line
