"""The emulator against the OpenAPI spec of the images paths, by schemathesis.

A bounded run (a few hundred generated requests, seconds) against ``asyncimg
serve --any-model`` (so that the generated model names reach the parameter
checks): no answer is a 5xx, every answer's body and content type conform to
the spec, every refusal has the API's error shape, and a request the spec
allows is refused only for a reason listed in :data:`DIVERGENCES` (the one
place that lists what the emulator refuses although the schema allows it).
The spec is ``../shared/openai-images-openapi.yaml``, found beside the clone
(or beside a parent of it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
)

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

SPEC_NAME = "openai-images-openapi.yaml"
EXAMPLES = 60  # per operation and generation mode: 360 requests in all


@attrs.frozen
class Divergence:
    """A refusal (400) of a request the schema allows, and why it is right."""

    param: str
    """A regular expression the error's ``param`` must match in full ("" for none)."""
    message: str
    """A regular expression searched in the error's message."""
    why: str


DIVERGENCES: tuple[Divergence, ...] = (
    # Deliberate: the real API refuses these although the schema allows them.
    Divergence("prompt", r"prompt is empty", "the API refuses an empty prompt"),
    Divergence("model", r"model is empty", "the API refuses an empty model name"),
    Divergence("response_format", r"GPT image models", "GPT image models answer b64_json only"),
    Divergence("output_compression", r"<= 100|outside 0\.\.100", "the API bounds it to 0..100"),
    Divergence("partial_images|n|output_compression", r"must be int, not float",
               "3.0 is a JSON Schema integer, not an integer to the API"),
    Divergence(r"\w+", r"not 'null'", "a form field cannot be null: 'null' is a string there"),
    Divergence(r"\w+", r"(for|by) (dall-e-2|dall-e-3|gpt-image-[\w.-]+|chatgpt-image-latest)",
               "the model's own rules, which the spec writes in prose, not in the schema"),
    Divergence("stream", r"Streaming is only supported", "streaming is for GPT image models"),
    # What the schema cannot say: an image's bytes, a file or url that must exist.
    Divergence(r"image|image\[\]|mask", r"not a PNG, JPEG or WebP|is empty|needs PNG|"
               r"must be square|under 4 MB|alpha|same size", "the bytes must be an image"),
    Divergence("image", r"image is required",
               "a part without a filename is a text field, not the image (schemathesis sends "
               "the array form so)"),
    Divergence("", r"Could not parse the multipart form", "a part header the HTTP layer refuses"),
    Divergence(r"images\[\d+\](\.\w+)?|mask(\.\w+)?",
               r"file_id|No such File|Error while downloading|image_url|url must",
               "a referenced file or url must exist"),
    Divergence("size", r"larger than the emulator draws|is neither 'auto'",
               "the emulator draws at most its pixel budget; a size is WIDTHxHEIGHT"),
)


def _spec_path() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    for parent in root.parents:
        candidate = parent / "shared" / SPEC_NAME
        if candidate.is_file():
            return candidate
    return None


def _divergence_of(param: str | None, message: str) -> Divergence | None:
    for divergence in DIVERGENCES:
        if re.fullmatch(divergence.param, param or "") and re.search(divergence.message, message):
            return divergence
    return None


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "serve", "--port", "0", "--any-model"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"(http://\S+/v1)", proc.stdout.readline())
        assert found is not None
        yield found.group(1)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _error_of(response: Any) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _exercise(
    operation: Any, mode: GenerationMode, base_url: str, answered: dict[int, int],
    unexplained: list[str],
) -> None:
    """Send ``EXAMPLES`` generated requests for one operation and mode; check each answer."""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[hypothesis.Phase.generate], suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=base_url)
        answered[response.status_code] = answered.get(response.status_code, 0) + 1
        case.validate_response(response, checks=[
            not_a_server_error, response_schema_conformance, content_type_conformance,
        ])
        if response.status_code < 400:
            return
        error = _error_of(response)
        shape = f"{operation.label}: {response.status_code} without the API's error shape"
        assert error is not None, shape
        assert isinstance(error.get("message"), str), shape
        if (
            mode is GenerationMode.POSITIVE
            and response.status_code == 400
            and _divergence_of(error.get("param"), error["message"]) is None
        ):
            unexplained.append(f"{operation.label}: {error.get('param')}: {error['message'][:200]}")

    run()


@pytest.mark.slow
def test_the_emulator_conforms_to_the_spec(served: str) -> None:
    spec = _spec_path()
    if spec is None:
        pytest.skip(f"no shared/{SPEC_NAME} beside the clone")
    schema = schemathesis.openapi.from_path(str(spec))
    unexplained: list[str] = []
    answered: dict[int, int] = {}
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _exercise(result.ok(), mode, served, answered, unexplained)
    assert answered.get(200, 0) > 20  # the run reached the images, not only refusals
    assert not unexplained, "refused although the spec allows it:\n" + "\n".join(
        sorted(set(unexplained))
    )
