"""What the API answers, as frozen attrs values parsed with ``from_json``.

Parsing is pure and forgiving: a field of the wrong type is dropped to ``None``
rather than crashing, and every field the spec does not name is kept in
``extra`` so that nothing a newer server sends is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

import attrs

from ._exceptions import APIResponseValidationError
from ._json import extra_fields as _extra
from ._json import int_field as _int
from ._json import str_field as _str

__all__ = [
    "Image",
    "ImagesResponse",
    "InputTokensDetails",
    "OutputTokensDetails",
    "Usage",
]


@attrs.frozen
class InputTokensDetails:
    """Input tokens split into text and image tokens."""

    text_tokens: int | None = None
    image_tokens: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset({"text_tokens", "image_tokens"})

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InputTokensDetails:
        """Build from the decoded JSON object."""
        return cls(_int(obj, "text_tokens"), _int(obj, "image_tokens"), _extra(obj, cls._KNOWN))


@attrs.frozen
class OutputTokensDetails:
    """Output tokens split into image and text tokens."""

    image_tokens: int | None = None
    text_tokens: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset({"text_tokens", "image_tokens"})

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> OutputTokensDetails:
        """Build from the decoded JSON object."""
        return cls(_int(obj, "image_tokens"), _int(obj, "text_tokens"), _extra(obj, cls._KNOWN))


def _counts_something(usage: object) -> TypeGuard[dict[str, Any]]:
    """Whether ``usage`` is a usage object with a count that is not zero.

    A gateway in front of a model billed per image (dall-e) may add a usage of
    zeros: that is "unknown", not "free" (a GPT image model never makes an
    image of 0 output tokens).
    """
    if not isinstance(usage, dict):
        return False
    counts = [v for v in usage.values() if isinstance(v, int) and not isinstance(v, bool)]
    for nested in usage.values():
        if isinstance(nested, dict):
            counts += [v for v in nested.values() if isinstance(v, int) and not isinstance(v, bool)]
    return not counts or any(counts)


@attrs.frozen
class Usage:
    """Token usage, sent for the GPT image models."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset(
        {
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "input_tokens_details",
            "output_tokens_details",
        }
    )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Usage:
        """Build from the decoded JSON object."""
        inp = obj.get("input_tokens_details")
        out = obj.get("output_tokens_details")
        return cls(
            input_tokens=_int(obj, "input_tokens"),
            output_tokens=_int(obj, "output_tokens"),
            total_tokens=_int(obj, "total_tokens"),
            input_tokens_details=InputTokensDetails.from_json(inp)
            if isinstance(inp, dict)
            else None,
            output_tokens_details=OutputTokensDetails.from_json(out)
            if isinstance(out, dict)
            else None,
            extra=_extra(obj, cls._KNOWN),
        )


@attrs.frozen
class Image:
    """One generated image: ``b64_json`` or ``url``, and dall-e-3's ``revised_prompt``.

    The base64 text is left out of ``repr()``; get the bytes with
    ``client.download(image)``.
    """

    url: str | None = None
    b64_json: str | None = attrs.field(default=None, repr=False)
    revised_prompt: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset({"url", "b64_json", "revised_prompt"})

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Image:
        """Build from the decoded JSON object."""
        return cls(
            url=_str(obj, "url"),
            b64_json=_str(obj, "b64_json"),
            revised_prompt=_str(obj, "revised_prompt"),
            extra=_extra(obj, cls._KNOWN),
        )


@attrs.frozen
class ImagesResponse:
    """The answer of generations, edits and variations.

    ``request_id`` comes from the ``x-request-id`` header; ``extra`` holds any
    field the spec does not name.
    """

    created: int | None
    data: tuple[Image, ...] = ()
    usage: Usage | None = None
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    request_id: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset(
        {"created", "data", "usage", "background", "output_format", "quality", "size"}
    )

    @classmethod
    def from_json(
        cls,
        obj: object,
        *,
        request_id: str | None = None,
        status_code: int = 200,
    ) -> ImagesResponse:
        """Build from the decoded JSON body.

        Raises:
            APIResponseValidationError: the body is not an object, or its ``data``
                is present but not a list.
        """
        if not isinstance(obj, dict):
            raise APIResponseValidationError(
                f"expected a JSON object, got {type(obj).__name__}",
                status_code=status_code,
                request_id=request_id,
            )
        data = obj.get("data", [])
        if not isinstance(data, list):
            raise APIResponseValidationError(
                f"expected 'data' to be a list, got {type(data).__name__}",
                status_code=status_code,
                request_id=request_id,
            )
        usage = obj.get("usage")
        return cls(
            created=_int(obj, "created"),
            data=tuple(Image.from_json(item) for item in data if isinstance(item, dict)),
            usage=Usage.from_json(usage) if _counts_something(usage) else None,
            background=_str(obj, "background"),
            output_format=_str(obj, "output_format"),
            quality=_str(obj, "quality"),
            size=_str(obj, "size"),
            request_id=request_id,
            extra=_extra(obj, cls._KNOWN),
        )
