"""The keyword parameters of each endpoint, declared once (PEP 692).

``generate``, ``edit`` and ``create_variation`` take ``**kwargs`` typed with
these TypedDicts (``Unpack``), so mypy and IDEs see every keyword while the list
is written here only; their overloads, the blocking client, ``generate_many``
and the CLI read the same declarations (at run time through :func:`keywords`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

if TYPE_CHECKING:
    from ._callstats import CallStats
    from ._config import QueryValue
    from ._files import ImageFile, ImageInput
    from ._refs import MaskImage
    from ._sdk import TimeoutLike

__all__ = [
    "EDIT_KEYWORDS",
    "GENERATE_KEYWORDS",
    "OPTIONS",
    "VARIATION_KEYWORDS",
    "Complexity",
    "EditKeywords",
    "GenerateKeywords",
    "OutputFormat",
    "Quality",
    "RequestOptions",
    "Size",
    "SvgOptions",
    "SvgReasoning",
    "Unpack",
    "VariationKeywords",
    "keywords",
]

# Known values for IDEs to complete; any other string is taken too (new values
# reach the server, which judges them), hence ``Literal[...] | str``.
Size = (
    Literal[
        "auto", "1024x1024", "1536x1024", "1024x1536", "256x256", "512x512", "1792x1024",
        "1024x1792",
    ]
    | str
)
"""``auto``, a listed size, or ``WIDTHxHEIGHT`` where the model takes any."""
Quality = Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"] | str
"""``xhigh``/``max``: the GPT Image 2.5 models; ``standard``/``hd``: the retired DALL·E ones."""
OutputFormat = Literal["png", "jpeg", "webp", "gif", "svg"] | str
"""``gif``: an animation of ``frame_count`` frames; ``svg``: vector text (``svg=``)."""
Complexity = Literal["low", "medium", "high"] | str
"""Effort spent planning the image, apart from ``quality``."""


class SvgReasoning(TypedDict, total=False):
    """How much the SVG author reasons."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | str | None


class SvgOptions(TypedDict, total=False):
    """``svg=``: the model that writes an SVG (``output_format="svg"``) and its reasoning."""

    model: str
    reasoning: SvgReasoning | None


class RequestOptions(TypedDict, total=False):
    """What every call takes besides the API's parameters."""

    extra_body: Mapping[str, Any] | None
    """Parameters this version does not know, sent as they are."""
    timeout: TimeoutLike
    """Seconds for one attempt of this call (the client's by default), or an
    ``httpx.Timeout``-shaped object (its ``read``/``write``; ``connect`` is the client's)."""
    max_retries: int | None
    """Retries of this call after the first attempt (the client's by default)."""
    extra_headers: Mapping[str, str] | None
    """Headers for this call, over the client's (``default_headers`` included)."""
    extra_query: Mapping[str, QueryValue] | None
    """Query parameters for this call, over the client's ``default_query``."""
    stats: CallStats | None
    """A :class:`~asyncimg.CallStats` the client fills in as this call runs."""


class _Common(RequestOptions, total=False):
    model: str | None
    n: int | None
    size: Size | None
    response_format: Literal["url", "b64_json"] | str | None
    """Legacy (the retired DALL·E models); ``b64_json`` is accepted, and not sent, for a
    GPT image model, which returns nothing else."""
    user: str | None
    """Deprecated by the API in favour of ``safety_identifier``; still sent."""


class _Rendering(_Common, total=False):
    partial_images: int | None
    """0 to 3 partial images before the final one (with ``stream=True``)."""
    quality: Quality | None
    output_format: OutputFormat | None
    output_compression: int | None
    background: Literal["transparent", "opaque", "auto"] | str | None
    complexity: Complexity | None
    frame_count: int | None
    """Frames of a GIF (``output_format="gif"``): 2 to 16, 9 by default."""
    frame_duration_ms: int | None
    """Milliseconds per GIF frame, 200 by default."""
    svg: SvgOptions | None
    """The SVG author (``output_format="svg"``):
    ``{"model": ..., "reasoning": {"effort": ...}}``."""
    safety_identifier: str | None
    """A stable (hashed) id of your end user, for abuse detection; echoed in the response."""


class GenerateKeywords(_Rendering, total=False):
    """The keywords of ``generate`` (``POST /images/generations``), ``prompt`` aside."""

    moderation: str | None
    style: str | None


class EditKeywords(_Rendering, total=False):
    """The keywords of ``edit`` (``POST /images/edits``), ``image`` and ``prompt`` aside."""

    mask: MaskImage | None
    markup: ImageInput | ImageFile | None
    """A transparent PNG drawn over the first image to guide the edit (GPT Image 2.5;
    the first image's size; not with ``mask``)."""
    input_fidelity: Literal["high", "low"] | str | None
    moderation: str | None
    """Taken only by an edit of images by reference (:class:`~asyncimg.ImageRef`)."""


class VariationKeywords(_Common, total=False):
    """The keywords of ``create_variation`` (``POST /images/variations``), ``image`` aside."""


def keywords(declaration: type[Mapping[str, Any]]) -> frozenset[str]:
    """The names a keyword declaration holds (inherited ones included)."""
    return frozenset(declaration.__annotations__)


GENERATE_KEYWORDS: frozenset[str] = keywords(GenerateKeywords)
EDIT_KEYWORDS: frozenset[str] = keywords(EditKeywords)
VARIATION_KEYWORDS: frozenset[str] = keywords(VariationKeywords)
OPTIONS: frozenset[str] = keywords(RequestOptions)
"""The names that are options of the call, not parameters sent to the API."""
