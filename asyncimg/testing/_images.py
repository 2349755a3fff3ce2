"""The images endpoints: generations, edits and variations, and what they answer.

Bodies: a generation is JSON; an edit or a variation is a multipart form
(``image`` or ``image[]``, ``mask``, text fields), and an edit may also be JSON
with its images by reference (``images: [{"image_url"} | {"file_id"}]``,
resolved by :mod:`._refs`). The parameters are checked with the client's own
rules (:func:`asyncimg._params.from_wire`); anything wrong is a 400.

The model that answers a request without ``model`` follows the spec's
defaults: dall-e-2 for generations and variations, gpt-image-1.5 for edits;
but a parameter only one family takes picks it (``style``: dall-e-3;
``response_format``: dall-e-2; ``output_format``, ``output_compression``,
``background``, ``moderation``, ``input_fidelity`` or a quality of
low/medium/high: gpt-image-1.5). The rules applied are those of the model
that answers: a request without ``model`` gets the default model's rules, as at
the API (a generation of 300x300, of n=11 or of a 3000-character prompt, or a
non-square variation, is refused as dall-e-2 refuses it). ``stream: true`` is
for the GPT image models only.

The content policy: a prompt containing :data:`CONTENT_POLICY_MARKER` (any
case) is refused with 400 ``content_policy_violation`` by the dall-e models,
``moderation_blocked`` by the GPT image models (Azure's content-filter error in
Azure mode).

Images are real PNGs of the requested size (``auto``: 1024x1024), RGBA when a
transparent background is asked for, the same for the same prompt (or input).
With Pillow installed, ``output_format`` ``jpeg`` and ``webp`` give real JPEG
and WebP bytes (``output_compression`` as their quality), edits keep the input
outside the mask and paint inside it, and variations are derived from the input
(:mod:`._pictures`); without Pillow those are PNGs too, and the response still
reports the format asked for. The dall-e models answer ``url`` results
(:mod:`._blobs`) unless ``response_format`` is ``b64_json``; dall-e-3 adds a
``revised_prompt``; the GPT image models answer ``b64_json`` with
``background``, ``output_format``, ``quality``, ``size`` and a ``usage`` in
tokens (gpt-image-1's published table), or, streamed, server-sent events
(:mod:`._streaming`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from .._exceptions import ValidationError
from .._files import ImageFile, sniff_mime
from .._params import (
    EditParams,
    Endpoint,
    GenerateParams,
    JsonEditParams,
    Params,
    VariationParams,
    from_wire,
)
from .._validation import rules_for, validate
from ._azure import azure_content_filter
from ._errors import Answer, Refusal, refuse
from ._journal import UploadedFile
from ._pictures import Recipe
from ._png import MAX_PIXELS
from ._refs import RefError, RefResolver
from ._streaming import sse_events

__all__ = [
    "CONTENT_POLICY_MARKER",
    "ROUTES",
    "ImagesRequest",
    "images_answer",
    "judge_images",
    "police",
    "read_body",
]

CONTENT_POLICY_MARKER = "forbidden-content"
"""A prompt containing this (any case) is refused by the emulator's content policy."""

ROUTES: Mapping[str, Endpoint] = {
    "/v1/images/generations": "generate",
    "/v1/images/edits": "edit",
    "/v1/images/variations": "variation",
}
"""The endpoint of each images path (outside Azure mode)."""

_GPT_DEFAULT = "gpt-image-1.5"
_GPT_ONLY = (
    "output_format", "output_compression", "background", "moderation", "input_fidelity",
    "complexity", "frame_count", "frame_duration_ms", "svg", "markup",
)
_GPT_QUALITIES = ("low", "medium", "high", "xhigh", "max")
_DEFAULT_SIZE = (1024, 1024)
_SIZE_RE = re.compile(r"^([0-9]+)x([0-9]+)$")
# Output tokens of a 1024x1024 image by quality (gpt-image-1's published table).
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "xhigh": 8320, "max": 16640}
_SVG_AUTHOR = "gpt-5.5-mini"
"""The SVG author the emulator names in ``svg_usage`` when the request names none."""
# What the spec allows for every model, whichever answers (a model not in the table too),
# with what the API gained since (the official SDK's types): quality xhigh/max, GIF, SVG.
_MAX_N = 10
_SPEC_CHOICES: Mapping[str, tuple[str, ...]] = {
    "quality": ("standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"),
    "output_format": ("png", "jpeg", "webp", "gif", "svg"),
    "background": ("transparent", "opaque", "auto"),
    "moderation": ("low", "auto"),
    "style": ("vivid", "natural"),
    "input_fidelity": ("high", "low"),
    "complexity": ("low", "medium", "high"),
}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)

_Files = dict[str, tuple[ImageFile, ...]]


async def read_body(
    request: web.Request, endpoint: Endpoint, record: dict[str, Any]
) -> tuple[dict[str, Any], _Files]:
    """The fields and files of an images request; the journal's part of them into ``record``.

    Raises:
        Refusal: the content type is not the endpoint's, or the body cannot be read (400).
    """
    content_type = request.content_type
    if endpoint == "generate" or (endpoint == "edit" and content_type == "application/json"):
        raw = await request.read()
        if content_type != "application/json":
            refuse(
                400,
                f"Invalid Content-Type header ({content_type or 'none'}), expected "
                "application/json.",
            )
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            refuse(400, _BAD_JSON)
        record["json"] = body
        if not isinstance(body, dict):
            refuse(400, _BAD_JSON)
        return body, {}
    if content_type != "multipart/form-data":
        await request.read()
        refuse(
            400,
            f"Invalid Content-Type header ({content_type or 'none'}), expected "
            "multipart/form-data or application/json.",
        )
    fields: dict[str, Any] = {}
    found: dict[str, list[ImageFile]] = {}
    uploads: list[UploadedFile] = []
    try:
        # Parts are read into memory (no temporary files left behind when a
        # client gives up mid-upload and the handler is cancelled).
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            data = bytes(await part.read(decode=True))
            if part.filename is None:
                fields[part.name] = data.decode("utf-8", "replace")
                continue
            declared = part.headers.get("Content-Type")
            mime = sniff_mime(data) or declared or "application/octet-stream"
            uploads.append(UploadedFile(part.name, part.filename, mime, len(data)))
            key = "image[]" if part.name.startswith("image[") else part.name
            found.setdefault(key, []).append(ImageFile(part.filename or "upload", data, mime))
    except (ValueError, AssertionError, BadHttpMessage) as exc:
        refuse(400, f"Could not parse the multipart form: {exc}")
    record["fields"] = dict(fields)
    record["files"] = tuple(uploads)
    return fields, {k: tuple(v) for k, v in found.items()}


@attrs.frozen
class ImagesRequest:
    """A valid images request: its parameters, the model that answers it, its inputs."""

    endpoint: Endpoint
    params: Params
    model: str
    inputs: tuple[ImageFile, ...]
    """The input images (not the mask) of an edit or a variation; a JSON edit's fetched."""
    mask: bytes | None
    width: int
    height: int

    @property
    def gpt(self) -> bool:
        """Whether a GPT image model answers."""
        return _is_gpt(self.model)

    @property
    def prompt(self) -> str:
        """The prompt ("" for a variation)."""
        return getattr(self.params, "prompt", "") or ""


def judge_images(
    endpoint: Endpoint,
    fields: Mapping[str, Any],
    files: Mapping[str, tuple[ImageFile, ...]],
    refs: RefResolver,
    *,
    as_json: bool,
    any_model: bool = False,
) -> ImagesRequest:
    """Check a request's parameters as the model that answers it would.

    The spec's bounds (``n`` 1..10, the enumerated values) hold for every
    model; a model the emulator does not know is refused as the API refuses it
    (404 ``model_not_found``) unless ``any_model`` (a compatible server that
    takes any name, with only those bounds).

    Raises:
        Refusal: a parameter is wrong for that model, or a reference cannot be
            used (400); the model is unknown (404).
    """
    try:
        params = from_wire(endpoint, fields, files, as_json=as_json)
    except ValidationError as exc:
        refuse(400, str(exc), param=exc.param)
    model = _effective_model(endpoint, params)
    if params.model is None:  # the default model's rules apply, as at the API
        try:
            validate(attrs.evolve(params, model=model))
        except ValidationError as exc:
            refuse(400, f"{exc} (the default model is {model})", param=exc.param)
    _check_spec_bounds(params)
    if not any_model and params.model is not None and rules_for(params.model) is None:
        refuse(
            404,
            f"The model `{params.model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    inputs, mask = _inputs(params, refs)
    if getattr(params, "stream", None) and not _is_gpt(model):
        refuse(400, "Streaming is only supported for the GPT image models.", param="stream")
    width, height = _size_of(params.size)
    return ImagesRequest(endpoint, params, model, inputs, mask, width, height)


def _check_spec_bounds(params: Params) -> None:
    """Refuse what the spec refuses for every model: ``n`` outside 1..10, a value not in an enum.

    Raises:
        Refusal: one is (400, naming the parameter).
    """
    n = getattr(params, "n", None)
    if n is not None and not 1 <= n <= _MAX_N:
        refuse(400, f"Invalid 'n': integer {n} is outside 1..{_MAX_N}.", param="n")
    for name, choices in _SPEC_CHOICES.items():
        value = getattr(params, name, None)
        if value is not None and value not in choices:
            refuse(
                400,
                f"Invalid value: {value!r}. Supported values are: {', '.join(map(repr, choices))}.",
                param=name,
                code="invalid_value",
            )


def police(request: ImagesRequest, headers: Mapping[str, str], *, azure: bool) -> None:
    """Apply the content policy to a request's prompt.

    Raises:
        Refusal: the prompt contains :data:`CONTENT_POLICY_MARKER` (400, with ``headers``).
    """
    prompt = request.prompt
    if CONTENT_POLICY_MARKER not in prompt.lower():
        return
    if azure:
        refusal = json.dumps(azure_content_filter(prompt)).encode()
        raise Refusal(Answer(400, refusal, dict(headers)))
    if request.gpt:
        refuse(
            400,
            "Your request was rejected by the safety system. If you believe this is "
            "an error, contact us at help.openai.com and include the request ID.",
            type_="image_generation_user_error",
            code="moderation_blocked",
            headers=headers,
        )
    refuse(
        400,
        "Your request was rejected as a result of our safety system. Your prompt may "
        "contain text that is not allowed by our safety system.",
        type_="image_generation_user_error",
        code="content_policy_violation",
        headers=headers,
    )


def images_answer(
    request: ImagesRequest, headers: dict[str, str], store: Callable[[Recipe], str]
) -> Answer:
    """The answer of a request that passed: its images (``store`` keeps a url result)."""
    params = request.params
    gpt = request.gpt
    background = getattr(params, "background", None) or params.extra_body.get("background")
    alpha = gpt and background == "transparent"
    as_url = not gpt and getattr(params, "response_format", None) != "b64_json"
    output_format = getattr(params, "output_format", None) or "png"
    seed = _seed(params, request.inputs)
    first = request.inputs[0].data if request.inputs else None
    data: list[dict[str, Any]] = []
    for index in range(params.images):
        recipe = Recipe(
            request.width, request.height, f"{seed}#{index}", alpha, output_format,
            getattr(params, "output_compression", None), first,
            request.mask, isinstance(params, VariationParams),
            getattr(params, "frame_count", None), getattr(params, "frame_duration_ms", None),
        )
        item: dict[str, Any] = {}
        if as_url:
            item["url"] = store(recipe)
        else:
            item["b64_json"] = recipe.b64()
        if request.model == "dall-e-3":
            item["revised_prompt"] = f"A detailed, vivid rendering of: {request.prompt}"
        data.append(item)
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    if gpt:
        quality = getattr(params, "quality", None)
        quality = quality if quality in _GPT_QUALITIES else "medium"
        body["background"] = "transparent" if alpha else "opaque"
        body["output_format"] = output_format
        body["quality"] = quality
        body["size"] = f"{request.width}x{request.height}"
        body["usage"] = _usage(request, quality)
        if output_format == "svg":
            body["svg_usage"] = _svg_usage(request)
    who = getattr(params, "safety_identifier", None) or getattr(params, "user", None)
    if who:  # the identifier the API used: safety_identifier, else the deprecated user
        body["safety_identifier"] = who
    if getattr(params, "stream", None):
        partials = getattr(params, "partial_images", None) or 0
        events = sse_events(
            body, endpoint=request.endpoint, partial_images=partials, created_at=body["created"]
        )
        return Answer(200, b"", headers, "text/event-stream", events)
    return Answer(200, json.dumps(body).encode(), headers)


def _inputs(params: Params, refs: RefResolver) -> tuple[tuple[ImageFile, ...], bytes | None]:
    """The input images (not the mask) and the mask's bytes; a JSON edit's fetched.

    Raises:
        Refusal: a reference (or a JSON edit's mask) cannot be used (400).
    """
    if isinstance(params, GenerateParams):
        return (), None
    if not isinstance(params, JsonEditParams):
        mask = getattr(params, "mask", None)
        return params.image, None if mask is None else mask.data
    try:
        files = tuple(refs.resolve(ref, f"images[{i}]") for i, ref in enumerate(params.image_refs))
        mask_file = None if params.mask is None else refs.resolve(params.mask, "mask")
    except RefError as exc:
        refuse(400, exc.message, param=exc.param, code=exc.code)
    return files, None if mask_file is None else mask_file.data


def _effective_model(endpoint: Endpoint, params: Params) -> str:
    if params.model is not None:
        return params.model
    gpt_quality = getattr(params, "quality", None) in _GPT_QUALITIES
    named = [getattr(params, k, None) for k in _GPT_ONLY]
    named += [params.extra_body.get(k) for k in _GPT_ONLY]
    if gpt_quality or any(value is not None for value in named):
        return _GPT_DEFAULT
    if getattr(params, "style", None) is not None:
        return "dall-e-3"
    if getattr(params, "response_format", None) is not None:
        return "dall-e-2"
    return _GPT_DEFAULT if endpoint == "edit" else "dall-e-2"


def _is_gpt(model: str) -> bool:
    return model.startswith(("gpt-image", "chatgpt-image"))


def _size_of(size: str | None) -> tuple[int, int]:
    if size is None or size == "auto":
        return _DEFAULT_SIZE
    found = _SIZE_RE.match(size)
    if not found:
        refuse(400, f"Invalid size {size!r}.", param="size")
    width, height = int(found.group(1)), int(found.group(2))
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        refuse(
            400,
            f"size {size!r} is larger than the emulator draws (at most {MAX_PIXELS} pixels).",
            param="size",
        )
    return width, height


def _seed(params: Params, inputs: tuple[ImageFile, ...]) -> str:
    if isinstance(params, GenerateParams):
        return params.prompt
    digest = hashlib.sha256(b"".join(f.data for f in inputs)).hexdigest()[:16]
    if isinstance(params, (EditParams, JsonEditParams)):
        return f"edit:{digest}:{params.prompt}"
    return f"variation:{digest}"


def _svg_usage(request: ImagesRequest) -> dict[str, Any]:
    svg = getattr(request.params, "svg", None) or {}
    author = svg.get("model")
    text = max(1, math.ceil(len(request.prompt) / 4))
    output = 40 + (request.width + request.height) // 16
    reasoning = {"none": 0, "minimal": 16, "low": 64, "high": 1024}.get(
        (svg.get("reasoning") or {}).get("effort") or "", 256
    )
    return {
        "input_tokens": text,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
        "total_tokens": text + output + reasoning,
        "model": author if isinstance(author, str) else _SVG_AUTHOR,
    }


def _usage(request: ImagesRequest, quality: str) -> dict[str, Any]:
    text = max(1, math.ceil(len(request.prompt) / 4))
    image_in = 194 * len(request.inputs) + (194 if request.mask is not None else 0)
    pixels = request.width * request.height
    per_image = math.ceil(_OUTPUT_TOKENS[quality] * pixels / (1024 * 1024))
    output = per_image * request.params.images
    return {
        "input_tokens": text + image_in,
        "output_tokens": output,
        "total_tokens": text + image_in + output,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
    }
