"""What the API answers, as frozen attrs values parsed with ``from_json``.

Parsing is pure and forgiving: a field of the wrong type is dropped to ``None``
rather than crashing, and every field the spec does not name is kept in
``extra`` so that nothing a newer server sends is lost.

Every value dumps like the official SDK's pydantic models (:class:`Dumpable`):
``model_dump()``, ``model_dump_json()``, ``to_dict()``, ``to_json()``, with the
API's field names and the unknown fields the server sent.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, ClassVar, Literal, TypeGuard

import attrs
from multidict import CIMultiDict

from ._exceptions import APIResponseValidationError
from ._json import extra_fields as _extra
from ._json import int_field as _int
from ._json import str_field as _str

__all__ = [
    "Dumpable",
    "Image",
    "ImagesResponse",
    "InputTokensDetails",
    "OutputTokensDetails",
    "SvgUsage",
    "Usage",
]


def _dumped(value: object, exclude_none: bool) -> object:
    if isinstance(value, Dumpable):
        return value.model_dump(exclude_none=exclude_none)
    if isinstance(value, (tuple, list)):
        return [_dumped(item, exclude_none) for item in value]
    if isinstance(value, Mapping):
        return {key: _dumped(item, exclude_none) for key, item in value.items()}
    return value


class Dumpable:
    """``model_dump``/``to_dict`` and their JSON forms, as the official SDK's models have them.

    A dump holds the API's field names and values (nested values dumped too,
    tuples as lists), then the unknown fields the server sent (``extra``), as
    they came; what the client adds (``request_id``, ``headers``, ...) is left
    out. A field this library reads as None may have been missing or null on
    the wire: ``exclude_unset`` (``to_dict``'s default, as the SDK's) leaves out
    every None field, like ``exclude_none``.
    """

    __slots__ = ()

    _NOT_SENT: ClassVar[frozenset[str]] = frozenset()
    """Fields the client fills in that are not in the server's JSON."""

    def model_dump(
        self,
        *,
        mode: Literal["json", "python"] | str = "python",
        include: Collection[str] | None = None,
        exclude: Collection[str] | None = None,
        by_alias: bool | None = None,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        round_trip: bool = False,
        warnings: bool | str = True,
    ) -> dict[str, Any]:
        """The value as a dict of the API's field names (pydantic's ``model_dump``).

        ``include``/``exclude`` name top-level fields; ``exclude_none`` (and
        ``exclude_unset``) drop None fields; ``exclude_defaults`` drops fields
        equal to their default. ``mode``, ``by_alias``, ``round_trip`` and
        ``warnings`` are accepted for compatibility: every value is JSON already.
        """
        drop_none = exclude_none or exclude_unset
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]  # every subclass is attrs
            name = field.name
            if name == "extra" or name in self._NOT_SENT:
                continue
            value = getattr(self, name)
            if drop_none and value is None:
                continue
            if exclude_defaults and _is_default(field, value):
                continue
            out[name] = _dumped(value, drop_none)
        extra: Mapping[str, Any] = getattr(self, "extra", {})
        for key, value in extra.items():
            if not (drop_none and value is None):
                out.setdefault(key, value)
        if include is not None:
            out = {key: value for key, value in out.items() if key in include}
        if exclude is not None:
            out = {key: value for key, value in out.items() if key not in exclude}
        return out

    def model_dump_json(
        self,
        *,
        indent: int | None = None,
        include: Collection[str] | None = None,
        exclude: Collection[str] | None = None,
        by_alias: bool | None = None,
        exclude_unset: bool = False,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        round_trip: bool = False,
        warnings: bool | str = True,
    ) -> str:
        """:meth:`model_dump` as JSON text (compact unless ``indent``)."""
        data = self.model_dump(
            include=include,
            exclude=exclude,
            exclude_unset=exclude_unset,
            exclude_defaults=exclude_defaults,
            exclude_none=exclude_none,
        )
        separators = (",", ":") if indent is None else None
        return json.dumps(data, indent=indent, separators=separators, ensure_ascii=False)

    def to_dict(
        self,
        *,
        mode: Literal["json", "python"] = "python",
        use_api_names: bool = True,
        exclude_unset: bool = True,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        warnings: bool = True,
    ) -> dict[str, Any]:
        """The value as a dict (the SDK's ``to_dict``: None fields left out by default)."""
        return self.model_dump(
            exclude_unset=exclude_unset,
            exclude_defaults=exclude_defaults,
            exclude_none=exclude_none,
        )

    def to_json(
        self,
        *,
        indent: int | None = 2,
        use_api_names: bool = True,
        exclude_unset: bool = True,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        warnings: bool = True,
    ) -> str:
        """:meth:`to_dict` as JSON text, indented by 2 by default (the SDK's ``to_json``)."""
        return self.model_dump_json(
            indent=indent,
            exclude_unset=exclude_unset,
            exclude_defaults=exclude_defaults,
            exclude_none=exclude_none,
        )


def _is_default(field: attrs.Attribute[Any], value: object) -> bool:
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs.Factory is a class
        default = default.factory()
    return bool(value == default)


@attrs.frozen
class InputTokensDetails(Dumpable):
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
class OutputTokensDetails(Dumpable):
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
class Usage(Dumpable):
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
class SvgUsage(Dumpable):
    """Tokens spent authoring an SVG (``output_format="svg"``), apart from the rendering's."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    """The model that wrote the SVG."""
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset(
        {"input_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "model"}
    )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SvgUsage:
        """Build from the decoded JSON object."""
        return cls(
            input_tokens=_int(obj, "input_tokens"),
            output_tokens=_int(obj, "output_tokens"),
            reasoning_tokens=_int(obj, "reasoning_tokens"),
            total_tokens=_int(obj, "total_tokens"),
            model=_str(obj, "model"),
            extra=_extra(obj, cls._KNOWN),
        )


@attrs.frozen
class Image(Dumpable):
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
class ImagesResponse(Dumpable):
    """The answer of generations, edits and variations.

    ``request_id`` comes from the ``x-request-id`` header (``_request_id`` too,
    the official SDK's name); ``headers`` and ``status_code`` are the HTTP
    answer's (neither takes part in equality); ``extra`` holds any field the
    spec does not name. ``safety_identifier`` is the one the server used;
    ``svg_usage`` the tokens spent writing an SVG (see :attr:`total_tokens`).
    """

    created: int | None
    data: tuple[Image, ...] = ()
    usage: Usage | None = None
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    safety_identifier: str | None = None
    svg_usage: SvgUsage | None = None
    request_id: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=CIMultiDict, repr=False, eq=False)
    """Case-insensitive (a copy, so that the response still pickles)."""
    status_code: int | None = attrs.field(default=None, repr=False, eq=False)
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    _KNOWN = frozenset(
        {
            "created",
            "data",
            "usage",
            "background",
            "output_format",
            "quality",
            "size",
            "safety_identifier",
            "svg_usage",
        }
    )
    _NOT_SENT = frozenset({"request_id", "headers", "status_code"})

    @property
    def _request_id(self) -> str | None:
        """The official SDK's name for :attr:`request_id`."""
        return self.request_id

    @property
    def total_tokens(self) -> int | None:
        """Every token the call spent: the rendering's ``usage`` and the SVG
        author's ``svg_usage``; None when the server reported neither."""
        counts = [
            part.total_tokens
            for part in (self.usage, self.svg_usage)
            if part is not None and part.total_tokens is not None
        ]
        return sum(counts) if counts else None

    @classmethod
    def from_json(
        cls,
        obj: object,
        *,
        request_id: str | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> ImagesResponse:
        """Build from the decoded JSON body (``headers``: the HTTP answer's).

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
        svg_usage = obj.get("svg_usage")
        return cls(
            created=_int(obj, "created"),
            data=tuple(Image.from_json(item) for item in data if isinstance(item, dict)),
            usage=Usage.from_json(usage) if _counts_something(usage) else None,
            background=_str(obj, "background"),
            output_format=_str(obj, "output_format"),
            quality=_str(obj, "quality"),
            size=_str(obj, "size"),
            safety_identifier=_str(obj, "safety_identifier"),
            svg_usage=SvgUsage.from_json(svg_usage) if isinstance(svg_usage, dict) else None,
            request_id=request_id,
            headers=CIMultiDict(headers or {}),
            status_code=status_code if headers is not None else None,
            extra=_extra(obj, cls._KNOWN),
        )
