"""The keyword parameters of each endpoint, declared once (PEP 692).

``generate``, ``edit`` and ``create_variation`` take ``**kwargs`` typed with
these TypedDicts (``Unpack``), so mypy and IDEs see every keyword while the list
is written here only; their overloads, the blocking client, ``generate_many``
and the CLI read the same declarations (at run time through :func:`keywords`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

if TYPE_CHECKING:
    from ._callstats import CallStats
    from ._config import QueryValue
    from ._refs import MaskImage
    from ._sdk import TimeoutLike

__all__ = [
    "EDIT_KEYWORDS",
    "GENERATE_KEYWORDS",
    "OPTIONS",
    "VARIATION_KEYWORDS",
    "EditKeywords",
    "GenerateKeywords",
    "RequestOptions",
    "Unpack",
    "VariationKeywords",
    "keywords",
]


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
    size: str | None
    response_format: str | None
    user: str | None


class _Rendering(_Common, total=False):
    partial_images: int | None
    """0 to 3 partial images before the final one (with ``stream=True``)."""
    quality: str | None
    output_format: str | None
    output_compression: int | None
    background: str | None


class GenerateKeywords(_Rendering, total=False):
    """The keywords of ``generate`` (``POST /images/generations``), ``prompt`` aside."""

    moderation: str | None
    style: str | None


class EditKeywords(_Rendering, total=False):
    """The keywords of ``edit`` (``POST /images/edits``), ``image`` and ``prompt`` aside."""

    mask: MaskImage | None
    input_fidelity: str | None
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
