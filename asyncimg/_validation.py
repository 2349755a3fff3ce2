"""The per-model rule table, and :func:`validate`, which applies it (pure, no I/O).

Two layers of checks:

* **Universal checks** hold for every model, including a model the table does
  not know (a new OpenAI model, a compatible server's ``"my-sd-xl"``) and
  ``model=None`` (the server's default, which this library cannot know): the
  prompt is a non-empty string; ``response_format``, when given, is ``url`` or
  ``b64_json``; ``size``, when given, is ``auto`` or ``WIDTHxHEIGHT`` with
  positive integers; ``output_compression`` is within 0..100; GIF output
  (``frame_count`` 2..16, ``frame_duration_ms``: only with it) is not
  streamed, compressed or masked, SVG output (``svg``: only with it) is one
  image, not streamed or compressed; ``markup`` is a transparent PNG the size
  of the first image, never with ``mask``; an edit has at
  most 16 input images and a variation exactly one; every uploaded image and
  mask is PNG, JPEG or WebP (the only formats the protocol knows and that the
  client can label with a MIME type), and a PNG is well formed
  (:func:`asyncimg._files.png_problem`: chunks, CRCs, data that fits its
  header); and ``extra_body`` does not repeat a
  parameter that was also passed by name.
* **Model rules** (:data:`MODEL_RULES`, one :class:`ModelRules` per model name;
  a dated snapshot such as ``gpt-image-2.5-flare-2026-09-08`` gets its family's)
  add everything the spec states per model: prompt length, ``n``, sizes,
  qualities, which optional parameters the model takes, which endpoints it
  serves, and the limits on input images and masks.

Values inside ``extra_body`` are never checked: it exists for parameters this
version does not know.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

import attrs

from ._decode import decode_problem
from ._exceptions import ValidationError
from ._files import ImageFile, ImageInfo, png_problem, sniff_mime

if TYPE_CHECKING:
    from ._params import Endpoint, Params
    from ._refs import ImageRef

__all__ = [
    "MAX_INPUT_IMAGES",
    "MODEL_RULES",
    "RETIRED_MODELS",
    "ModelRules",
    "SizeRule",
    "retired_note",
    "rules_for",
    "sends_response_format",
    "validate",
]

MAX_INPUT_IMAGES = 16
"""The most images one edit may upload, whatever the model (the spec's ``maxItems``)."""

_MIB = 1024 * 1024
_FORMAT_OF_MIME: Mapping[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/webp": "webp",
}
_RESPONSE_FORMATS = ("url", "b64_json")
_SIZE_RE = re.compile(r"([0-9]+)x([0-9]+)")  # fullmatch: "1536x864\n" is no size
_SNAPSHOT_RE = re.compile(r"(.+)-[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FRAME_COUNTS = (2, 16)
_ENDPOINT_NAMES: Mapping[str, str] = {
    "generate": "generations",
    "edit": "edits",
    "variation": "variations",
}


@attrs.frozen
class SizeRule:
    """Free-form sizes (``WIDTHxHEIGHT``) a model accepts besides its listed ones.

    ``multiple``: width and height must both be divisible by it; ``max_edge``:
    the longest side; ``max_pixels``: width times height; ``max_ratio``: the
    long side over the short side.
    """

    multiple: int = 16
    max_edge: int = 3840
    max_pixels: int = 3840 * 2160
    max_ratio: float = 3.0

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width x height`` is refused, or None when it is accepted."""
        if width % self.multiple or height % self.multiple:
            return f"width and height must both be divisible by {self.multiple}"
        if max(width, height) > self.max_edge:
            return f"the longest edge may be at most {self.max_edge} pixels"
        if width * height > self.max_pixels:
            return f"width times height may be at most {self.max_pixels} pixels"
        if max(width, height) > self.max_ratio * min(width, height):
            ratio = f"{self.max_ratio:g}"
            return f"the aspect ratio must be between 1:{ratio} and {ratio}:1"
        return None


@attrs.frozen(kw_only=True)
class ModelRules:
    """What one model accepts, as the spec describes it.

    A tuple of allowed values lists them in the order the messages show; None
    means the model does not take the parameter at all.
    """

    name: str
    endpoints: frozenset[Endpoint]
    prompt_max: int
    n_max: int
    sizes: tuple[str, ...]
    """The sizes accepted as written (``auto`` included when the model takes it)."""
    free_sizes: SizeRule | None = None
    """Other ``WIDTHxHEIGHT`` sizes, when the model takes arbitrary resolutions."""
    qualities: tuple[str, ...]
    response_formats: tuple[str, ...] | None
    output_formats: tuple[str, ...] | None = None
    compression_formats: tuple[str, ...] | None = None
    """The output formats ``output_compression`` may be sent with (None: not supported).

    For the GPT image models that is every format, png included: the spec says
    compression applies to jpeg and webp, yet its own example edit sends
    ``output_format="png", output_compression=100`` (100 is the default), so a
    rule refusing png would refuse what the API accepts."""
    backgrounds: tuple[str, ...] | None = None
    transparent_formats: tuple[str, ...] = ("png", "webp")
    """The output formats that can carry ``background='transparent'``."""
    moderations: tuple[str, ...] | None = None
    styles: tuple[str, ...] | None = None
    input_fidelities: tuple[str, ...] | None = None
    response_format_note: str = ""
    """Said when ``response_format`` is refused (why the model does not take it)."""
    max_input_images: int = 1
    input_formats: tuple[str, ...] = ("png",)
    max_image_bytes: int = 4 * _MIB
    """Every input image must be strictly smaller than this."""
    square_inputs: bool = False
    alpha_without_mask: bool = False
    """An edit without a mask needs an input image with transparency."""
    mask_formats: tuple[str, ...] = ("png",)
    max_mask_bytes: int = 4 * _MIB
    mask_same_size: bool = True
    """The mask must have the dimensions of the (first) input image."""
    json_edits: bool = False
    """Edits by reference (:class:`~asyncimg.ImageRef`, sent as JSON) are accepted."""
    streams: bool = False
    """The model takes ``stream`` and ``partial_images``."""
    complexities: tuple[str, ...] | None = None
    markup: bool = False
    """Edits take ``markup`` (a transparent PNG drawn over the first image)."""

    @property
    def takes_images(self) -> bool:
        """Whether the model serves an endpoint that uploads images (edits or variations)."""
        return bool(self.endpoints & {"edit", "variation"})

    @property
    def square_edges(self) -> tuple[int, ...]:
        """The edges of the listed square sizes, smallest first (dall-e-2: 256, 512, 1024)."""
        parsed = [_parse_size(size) for size in self.sizes]
        return tuple(sorted({p[0] for p in parsed if p is not None and p[0] == p[1]}))


_GPT_NOTE = "GPT image models always return b64_json"
_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")


def _gpt(
    name: str, *, free_sizes: bool = False, fidelity: bool = True, v2_5: bool = False
) -> ModelRules:
    """The rules of a GPT image model; ``v2_5``: the GPT Image 2.5 family's extras
    (qualities ``xhigh`` and ``max``, ``markup``)."""
    return ModelRules(
        name=name,
        endpoints=frozenset({"generate", "edit"}),
        prompt_max=32000,
        n_max=10,
        sizes=_GPT_SIZES,
        free_sizes=SizeRule() if free_sizes else None,
        qualities=("low", "medium", "high", *(("xhigh", "max") if v2_5 else ()), "auto"),
        response_formats=None,
        response_format_note=_GPT_NOTE,
        output_formats=("png", "jpeg", "webp", "gif", "svg"),
        complexities=("low", "medium", "high"),
        markup=v2_5,
        compression_formats=("png", "jpeg", "webp"),
        backgrounds=("transparent", "opaque", "auto"),
        moderations=("low", "auto"),
        input_fidelities=("high", "low") if fidelity else None,
        max_input_images=MAX_INPUT_IMAGES,
        input_formats=("png", "webp", "jpeg"),
        max_image_bytes=50 * _MIB,
        json_edits=True,
        streams=True,
    )


_DALL_E_2 = ModelRules(
    name="dall-e-2",
    endpoints=frozenset({"generate", "edit", "variation"}),
    prompt_max=1000,
    n_max=10,
    sizes=("256x256", "512x512", "1024x1024"),
    qualities=("standard", "auto"),
    response_formats=_RESPONSE_FORMATS,
    max_input_images=1,
    input_formats=("png",),
    max_image_bytes=4 * _MIB,
    square_inputs=True,
    alpha_without_mask=True,
)

_DALL_E_3 = ModelRules(
    name="dall-e-3",
    endpoints=frozenset({"generate"}),
    prompt_max=4000,
    n_max=1,
    sizes=("1024x1024", "1792x1024", "1024x1792"),
    qualities=("standard", "hd", "auto"),
    response_formats=_RESPONSE_FORMATS,
    styles=("vivid", "natural"),
)

MODEL_RULES: Mapping[str, ModelRules] = types.MappingProxyType(
    {
        rules.name: rules
        for rules in (
            _DALL_E_2,
            _DALL_E_3,
            _gpt("gpt-image-1"),
            _gpt("gpt-image-1-mini", fidelity=False),
            _gpt("gpt-image-1.5"),
            _gpt("gpt-image-2", free_sizes=True),
            _gpt("gpt-image-2-2026-04-21", free_sizes=True),
            _gpt("gpt-image-2.5-sunburst", free_sizes=True, v2_5=True),
            _gpt("gpt-image-2.5-flare", free_sizes=True, v2_5=True),
            _gpt("gpt-image-2.6-sunburst"),
            _gpt("gpt-image-2.6-flare"),
            _gpt("chatgpt-image-latest"),
        )
    }
)
"""The rules of every model the spec names, by model name (read-only)."""


def rules_for(model: str | None) -> ModelRules | None:
    """The rules of ``model``, or None for a model not in the table (or None).

    A dated snapshot (``{family}-YYYY-MM-DD``) of a model in the table gets
    that model's rules, under its own name. A model without rules gets only
    the universal checks, so that new models and compatible servers are never
    refused for what this table does not know.
    """
    if model is None:
        return None
    rules = MODEL_RULES.get(model)
    if rules is not None:
        return rules
    snapshot = _SNAPSHOT_RE.fullmatch(model)
    family = MODEL_RULES.get(snapshot.group(1)) if snapshot else None
    return None if family is None else attrs.evolve(family, name=model)


_CURRENT = "gpt-image-2.5-sunburst or gpt-image-2.5-flare"
RETIRED_MODELS: Mapping[str, str] = types.MappingProxyType(
    {
        "gpt-image-1": f"gpt-image-1 was shut down on 2026-10-23; use {_CURRENT}",
        "dall-e-2": f"dall-e-2 was retired on 2026-05-12; use a GPT image model ({_CURRENT})",
        "dall-e-3": f"dall-e-3 was retired on 2026-05-12; use a GPT image model ({_CURRENT})",
    }
)
"""Models the API no longer serves, and what to say about each. Their rules stay
in :data:`MODEL_RULES`: compatible servers (and the emulator) still answer them."""


def retired_note(model: str | None) -> str | None:
    """What to tell a caller whose ``model`` the API answered "not found": that it
    was retired and what replaces it; None for a model that was not retired."""
    return None if model is None else RETIRED_MODELS.get(model)


def sends_response_format(model: str | None, response_format: str | None) -> bool:
    """Whether ``response_format`` goes on the wire for ``model``.

    ``b64_json`` asked of a model that always returns it and takes no
    ``response_format`` (the GPT image models) is what the model returns
    anyway: it is accepted and not sent, since the API refuses the parameter.
    Anything else is sent (and judged by :func:`validate`).
    """
    if response_format != "b64_json":
        return response_format is not None
    rules = rules_for(model)
    return rules is None or rules.response_formats is not None


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def _parse_size(size: str) -> tuple[int, int] | None:
    found = _SIZE_RE.fullmatch(size)
    if found is None:
        return None
    width, height = int(found.group(1)), int(found.group(2))
    if width <= 0 or height <= 0:
        return None
    return width, height


# ---------------------------------------------------------------- universal


_NOT_NAMED = frozenset({"extra_body"})


def _check_extra_body(params: Params) -> None:
    named = {
        a.name
        for a in attrs.fields(type(params))
        if a.name not in _NOT_NAMED and getattr(params, a.name) is not None
    }
    if "image_refs" in named:
        named.add("images")  # a JSON edit's image references go out as `images`
    for key in params.extra_body:
        if key in named:
            raise ValidationError(
                key,
                f"extra_body repeats {key!r}, which is also passed as a parameter; pass it once",
            )


def _check_universal(params: Params) -> None:
    _check_extra_body(params)
    if "stream" in params.extra_body:
        raise ValidationError(
            "stream", "pass stream=True to the call (it returns an ImageStream), not in extra_body"
        )
    model = params.model
    if model is not None and not model.strip():
        raise ValidationError("model", "model is empty; pass None to let the server choose")
    prompt: str | None = getattr(params, "prompt", None)
    if prompt is not None and not prompt.strip():
        raise ValidationError("prompt", "prompt is empty; describe the image you want")
    response_format: str | None = getattr(params, "response_format", None)
    if response_format is not None and response_format not in _RESPONSE_FORMATS:
        raise ValidationError(
            "response_format",
            f"response_format {response_format!r} is not one of "
            f"{_one_of(_RESPONSE_FORMATS)}",
        )
    size = params.size
    if size is not None and size != "auto" and _parse_size(size) is None:
        raise ValidationError(
            "size",
            f"size {size!r} is neither 'auto' nor WIDTHxHEIGHT with positive whole numbers",
        )
    compression: int | None = getattr(params, "output_compression", None)
    if compression is not None and not 0 <= compression <= 100:
        raise ValidationError(
            "output_compression",
            f"output_compression {compression} is outside 0..100",
        )
    _check_output_kinds(params)
    refs = _refs_of(params)
    if refs is not None:
        _check_refs_universal(refs)
    elif params.endpoint != "generate":
        _check_images_universal(_images_of(params), params.endpoint)
        mask = _mask_of(params)
        if mask is not None:
            _check_known_format("mask", mask)
        markup: ImageFile | None = getattr(params, "markup", None)
        if markup is not None:
            _check_markup(markup, mask, _images_of(params)[0])


def _check_output_kinds(params: Params) -> None:
    """GIF and SVG output: their own parameters, and what they cannot be combined with."""
    output_format: str | None = getattr(params, "output_format", None)
    frame_count: int | None = getattr(params, "frame_count", None)
    for name in ("frame_count", "frame_duration_ms"):
        if getattr(params, name, None) is not None and output_format != "gif":
            raise ValidationError(name, f"{name} is taken only with output_format='gif'")
    low, high = _FRAME_COUNTS
    if frame_count is not None and not low <= frame_count <= high:
        raise ValidationError(
            "frame_count", f"frame_count {frame_count} is outside {low}..{high}"
        )
    duration: int | None = getattr(params, "frame_duration_ms", None)
    if duration is not None and duration < 1:
        raise ValidationError(
            "frame_duration_ms", f"frame_duration_ms {duration} is not a positive delay"
        )
    svg: Mapping[str, object] | None = getattr(params, "svg", None)
    if svg is not None:
        if output_format != "svg":
            raise ValidationError(
                "svg", "svg (the SVG author) is taken only with output_format='svg'"
            )
        author = svg.get("model")
        if author is not None and (not isinstance(author, str) or not author.strip()):
            raise ValidationError("svg", f"svg['model'] must name a model, not {author!r}")
        reasoning = svg.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, Mapping):
            raise ValidationError(
                "svg",
                f"svg['reasoning'] must be a mapping such as {{'effort': 'low'}}, "
                f"not {reasoning!r}",
            )
    if output_format not in ("gif", "svg"):
        return
    kind = output_format.upper()
    if getattr(params, "stream", None):
        raise ValidationError("stream", f"{kind} output cannot be streamed")
    if getattr(params, "partial_images", None) is not None:
        raise ValidationError("partial_images", f"{kind} output has no partial images")
    if getattr(params, "output_compression", None) is not None:
        raise ValidationError(
            "output_compression", f"output_compression does not apply to {kind} output"
        )
    if output_format == "gif" and getattr(params, "mask", None) is not None:
        raise ValidationError("mask", "GIF output does not take a mask")
    if output_format == "svg" and params.n is not None and params.n != 1:
        raise ValidationError("n", f"n={params.n}: SVG output is one image, n must be 1")


def _check_markup(markup: ImageFile, mask: ImageFile | None, first: ImageFile) -> None:
    if mask is not None:
        raise ValidationError("markup", "markup cannot be combined with mask: give one of them")
    _check_known_format("markup", markup)
    if _format_of(markup) != "png":
        raise ValidationError(
            "markup", f"markup: {markup.filename!r} is not a PNG; markup is a transparent PNG"
        )
    info = markup.info
    if info is not None and not info.has_alpha:
        raise ValidationError(
            "markup",
            f"markup: {markup.filename!r} has no alpha channel; markup is drawn over the "
            "image, so it must be transparent where the image shows through",
        )
    under = first.info
    if info is not None and under is not None and (info.width, info.height) != (
        under.width,
        under.height,
    ):
        raise ValidationError(
            "markup",
            f"markup: {markup.filename!r} is {info.width}x{info.height}; it must have the "
            f"size of the first image, {under.width}x{under.height}",
        )


def _images_of(params: Params) -> tuple[ImageFile, ...]:
    images: tuple[ImageFile, ...] = getattr(params, "image", ())
    return images


def _refs_of(params: Params) -> tuple[ImageRef, ...] | None:
    """The images of an edit by reference (a JSON edit), or None for any other request."""
    refs: tuple[ImageRef, ...] | None = getattr(params, "image_refs", None)
    return refs


def _check_refs_universal(refs: tuple[ImageRef, ...]) -> None:
    if not refs:
        raise ValidationError("image", "image is required")
    if len(refs) > MAX_INPUT_IMAGES:
        raise ValidationError(
            "image",
            f"image: {len(refs)} images given; an edit takes at most {MAX_INPUT_IMAGES}",
        )


def _mask_of(params: Params) -> ImageFile | None:
    mask: ImageFile | None = getattr(params, "mask", None)
    return mask


def _format_of(image: ImageFile) -> str | None:
    return _FORMAT_OF_MIME.get(sniff_mime(image.data) or "")


def _image_params(images: tuple[ImageFile, ...]) -> list[tuple[str, ImageFile]]:
    if len(images) == 1:
        return [("image", images[0])]
    return [(f"image[{i}]", image) for i, image in enumerate(images)]


def _check_images_universal(images: tuple[ImageFile, ...], endpoint: Endpoint) -> None:
    if not images:
        raise ValidationError("image", "image is required")
    if endpoint == "variation" and len(images) != 1:
        raise ValidationError(
            "image", f"image: a variation takes exactly one image, not {len(images)}"
        )
    if len(images) > MAX_INPUT_IMAGES:
        raise ValidationError(
            "image",
            f"image: {len(images)} images given; an edit takes at most {MAX_INPUT_IMAGES}",
        )
    for param, image in _image_params(images):
        _check_known_format(param, image)


def _check_known_format(param: str, image: ImageFile) -> None:
    if not image.data:
        raise ValidationError(param, f"{param}: {image.filename!r} is empty (0 bytes)")
    found = _format_of(image)
    if found is None:
        raise ValidationError(
            param, f"{param}: {image.filename!r} is not a PNG, JPEG or WebP image"
        )
    problem = png_problem(image.data) if found == "png" else None
    if problem is not None:
        raise ValidationError(param, f"{param}: {image.filename!r} is not a valid PNG: {problem}")
    problem = decode_problem(image.data)  # with Pillow installed, every pixel too
    if problem is not None:
        raise ValidationError(param, f"{param}: {image.filename!r} {problem}")


# ---------------------------------------------------------------- per model


_GPT_ONLY = "only the GPT image models take it"
_WHO_TAKES: Mapping[str, str] = {
    "background": _GPT_ONLY,
    "output_format": _GPT_ONLY,
    "output_compression": _GPT_ONLY,
    "moderation": _GPT_ONLY,
    "complexity": _GPT_ONLY,
    "input_fidelity": "only GPT image models other than gpt-image-1-mini take it",
    "style": "only dall-e-3 takes it",
    "stream": "only the GPT image models stream",
    "partial_images": "only the GPT image models stream",
}


def _refuse_unsupported(param: str, value: object, rules: ModelRules, note: str = "") -> NoReturn:
    reason = f"; {note}" if note else ""
    raise ValidationError(param, f"{param} {value!r} is not supported by {rules.name}{reason}")


def _check_choice(
    param: str, value: str | None, allowed: tuple[str, ...] | None, rules: ModelRules
) -> None:
    if value is None:
        return
    if allowed is None:
        _refuse_unsupported(param, value, rules, _WHO_TAKES.get(param, ""))
    if value not in allowed:
        raise ValidationError(
            param, f"{param} {value!r} is not one of {_one_of(allowed)} for {rules.name}"
        )


def _check_size(size: str | None, rules: ModelRules) -> None:
    if size is None or size in rules.sizes:
        return
    parsed = _parse_size(size)
    if rules.free_sizes is not None and parsed is not None:
        problem = rules.free_sizes.problem(*parsed)
        if problem is None:
            return
        raise ValidationError("size", f"size {size!r} is not accepted by {rules.name}: {problem}")
    listed = _one_of(rules.sizes)
    if rules.free_sizes is not None:
        listed += " or WIDTHxHEIGHT"
    raise ValidationError("size", f"size {size!r} is not one of {listed} for {rules.name}")


def _check_model(params: Params, rules: ModelRules) -> None:
    endpoint = params.endpoint
    if endpoint not in rules.endpoints:
        served = ", ".join(
            _ENDPOINT_NAMES[e] for e in ("generate", "edit", "variation") if e in rules.endpoints
        )
        raise ValidationError(
            "model",
            f"model {rules.name!r} does not support {_ENDPOINT_NAMES[endpoint]} "
            f"(it supports {served})",
        )
    prompt: str | None = getattr(params, "prompt", None)
    if prompt is not None and len(prompt) > rules.prompt_max:
        raise ValidationError(
            "prompt",
            f"prompt is {len(prompt)} characters; {rules.name} allows at most {rules.prompt_max}",
        )
    if params.n is not None and params.n > rules.n_max:
        allowed = "only n=1" if rules.n_max == 1 else f"n from 1 to {rules.n_max}"
        raise ValidationError("n", f"n={params.n} is too many; {rules.name} allows {allowed}")
    _check_size(params.size, rules)
    if not rules.streams:
        for name in ("stream", "partial_images"):
            value = getattr(params, name, None)
            if value is not None and value is not False:
                _refuse_unsupported(name, value, rules, _WHO_TAKES[name])
    _check_choice("quality", getattr(params, "quality", None), rules.qualities, rules)
    response_format: str | None = getattr(params, "response_format", None)
    if response_format is not None and rules.response_formats is None:
        _refuse_unsupported("response_format", response_format, rules, rules.response_format_note)
    _check_choice("response_format", response_format, rules.response_formats, rules)
    _check_choice("style", getattr(params, "style", None), rules.styles, rules)
    _check_choice("moderation", getattr(params, "moderation", None), rules.moderations, rules)
    _check_choice("complexity", getattr(params, "complexity", None), rules.complexities, rules)
    markup = getattr(params, "markup", None)
    if markup is not None and not rules.markup:
        raise ValidationError(
            "markup",
            f"markup is not supported by {rules.name}; only the GPT Image 2.5 models take it",
        )
    _check_choice(
        "input_fidelity", getattr(params, "input_fidelity", None), rules.input_fidelities, rules
    )
    output_format: str | None = getattr(params, "output_format", None)
    _check_choice("output_format", output_format, rules.output_formats, rules)
    background: str | None = getattr(params, "background", None)
    _check_choice("background", background, rules.backgrounds, rules)
    if (
        background == "transparent"
        and output_format is not None
        and output_format not in rules.transparent_formats
    ):
        raise ValidationError(
            "background",
            f"background 'transparent' needs output_format "
            f"{' or '.join(rules.transparent_formats)}, not {output_format!r}",
        )
    compression: int | None = getattr(params, "output_compression", None)
    if compression is not None:
        if rules.compression_formats is None:
            _refuse_unsupported(
                "output_compression", compression, rules, _WHO_TAKES["output_compression"]
            )
        elif output_format is not None and output_format not in rules.compression_formats:
            raise ValidationError(
                "output_compression",
                f"output_compression {compression} applies only to output_format "
                f"{' or '.join(rules.compression_formats)}, not {output_format!r}",
            )
    if _refs_of(params) is not None:
        if not rules.json_edits:
            raise ValidationError(
                "image",
                f"image: {rules.name} does not take images by reference (ImageRef, a JSON "
                "edit); only the GPT image models do: upload the files instead",
            )
    elif endpoint != "generate":
        _check_images_model(_images_of(params), _mask_of(params), endpoint, rules)


def _check_images_model(
    images: tuple[ImageFile, ...],
    mask: ImageFile | None,
    endpoint: Endpoint,
    rules: ModelRules,
) -> None:
    if endpoint == "edit" and len(images) > rules.max_input_images:
        allowed = (
            "one image"
            if rules.max_input_images == 1
            else f"at most {rules.max_input_images} images"
        )
        raise ValidationError(
            "image", f"image: {len(images)} images given; {rules.name} takes {allowed}"
        )
    needs_header = rules.square_inputs or (
        endpoint == "edit" and mask is None and rules.alpha_without_mask
    )
    infos: list[ImageInfo | None] = []
    for param, image in _image_params(images):
        info = _check_file(
            param, image, rules.input_formats, rules.max_image_bytes, rules, needs_header
        )
        if rules.square_inputs and info is not None and info.width != info.height:
            raise ValidationError(
                param,
                f"{param}: {image.filename!r} is {info.width}x{info.height}; "
                f"{rules.name} needs a square image",
            )
        infos.append(info)
    if endpoint != "edit":
        return
    first = infos[0]
    if mask is None:
        if rules.alpha_without_mask and first is not None and not first.has_alpha:
            raise ValidationError(
                "image",
                f"image: {images[0].filename!r} has no transparency; {rules.name} edits "
                f"its transparent areas, so give an image with an alpha channel or a mask",
            )
        return
    mask_info = _check_file(
        "mask", mask, rules.mask_formats, rules.max_mask_bytes, rules, rules.mask_same_size
    )
    if (
        rules.mask_same_size
        and first is not None
        and mask_info is not None
        and (mask_info.width, mask_info.height) != (first.width, first.height)
    ):
        raise ValidationError(
            "mask",
            f"mask: {mask.filename!r} is {mask_info.width}x{mask_info.height}; it must "
            f"have the size of the image, {first.width}x{first.height}",
        )


def _check_file(
    param: str,
    image: ImageFile,
    formats: tuple[str, ...],
    max_bytes: int,
    rules: ModelRules,
    needs_header: bool,
) -> ImageInfo | None:
    """Check format and byte size; the header is required when a rule reads it."""
    found = _format_of(image)
    wanted = " or ".join(f.upper() for f in formats)
    if found not in formats:
        what = "not a PNG, JPEG or WebP image" if found is None else f"a {found.upper()}"
        raise ValidationError(
            param, f"{param}: {image.filename!r} is {what}; {rules.name} needs {wanted}"
        )
    info = image.info
    if info is None and needs_header:
        raise ValidationError(
            param,
            f"{param}: {image.filename!r} is not a valid {wanted}: its header cannot be read",
        )
    if len(image.data) >= max_bytes:
        raise ValidationError(
            param,
            f"{param}: {image.filename!r} is {len(image.data)} bytes; {rules.name} needs "
            f"less than {max_bytes // _MIB} MB ({max_bytes} bytes)",
        )
    return info


def validate(params: Params) -> None:
    """Check request parameters against the universal rules and the model's rules.

    A model not in :data:`MODEL_RULES` (and ``model=None``) gets only the
    universal checks. Values in ``extra_body`` are not checked.

    Raises:
        ValidationError: the first rule broken; ``param`` names the parameter
            (``image[1]`` for the second of several images) and the message
            names the value and the rule.
    """
    _check_universal(params)
    rules = rules_for(params.model)
    if rules is not None:
        _check_model(params, rules)
