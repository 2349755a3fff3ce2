"""Request parameters as frozen attrs values, and their wire forms.

Each endpoint has one class. ``build()`` checks the types (attrs validators),
then the model's rules (:mod:`asyncimg._validation`), and raises
:class:`~asyncimg.ValidationError` naming the parameter; nothing here does I/O.
``to_json()`` gives the JSON body of a generation, ``to_form()`` the multipart
fields and files of an edit or a variation; an edit of images by reference
(:class:`JsonEditParams`) is JSON too. Parameters left as None are never
sent. ``from_wire()`` reads a request the other way round (the emulator uses it
to judge requests exactly as the client does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar, cast

import attrs
from attrs.validators import and_, deep_iterable, ge, instance_of, le, optional

from ._body import Body, encode_form, encode_json
from ._exceptions import ValidationError
from ._files import ImageFile
from ._refs import ImageRef
from ._validation import validate

__all__ = [
    "EditParams",
    "Endpoint",
    "Form",
    "GenerateParams",
    "JsonEditParams",
    "Params",
    "VariationParams",
]

Endpoint = Literal["generate", "edit", "variation"]

_P = TypeVar("_P", bound="_Base")


def _not_bool(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool):
        raise TypeError(f"'{attribute.name}' must be <class 'int'>", attribute, int, value)


_opt_str = optional(instance_of(str))
_opt_int = optional(and_(instance_of(int), _not_bool))
_opt_n = optional(and_(instance_of(int), _not_bool, ge(1)))
_opt_compression = optional(and_(instance_of(int), _not_bool, ge(0), le(100)))
_images = deep_iterable(instance_of(ImageFile), instance_of(tuple))
_refs = deep_iterable(instance_of(ImageRef), instance_of(tuple))
_opt_bool = optional(instance_of(bool))
_opt_partials = optional(and_(instance_of(int), _not_bool, ge(0), le(3)))
_opt_mapping = optional(instance_of(Mapping))  # type: ignore[type-abstract]
_opt_file = optional(instance_of(ImageFile))


@attrs.frozen
class Form:
    """A multipart body: text fields and files, in the order they are sent."""

    fields: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, ImageFile], ...]

    def encode(
        self, params: Sequence[str] | None = None, extra: Mapping[str, Any] | None = None
    ) -> Body:
        """The ``multipart/form-data`` body as bytes.

        ``params`` names the parameter of each file in an error (default: its
        field name); ``extra`` holds the fields that came from ``extra_body``.

        Raises:
            ValidationError: a name, file name or text cannot be sent (see :func:`encode_form`).
        """
        names = params if params is not None else [name for name, _ in self.files]
        files = tuple(
            (param, name, file.filename, file.data, file.mime)
            for param, (name, file) in zip(names, self.files, strict=True)
        )
        return encode_form(self.fields, files, extra or {})


_NESTED_FIELDS = frozenset({"svg"})
"""Parameters whose mapping goes in a form as bracketed names (``svg[model]``)."""


def _form_fields(values: Mapping[str, Any], nested: bool = False) -> tuple[tuple[str, str], ...]:
    """Form fields of ``values``; the mapping of a parameter in :data:`_NESTED_FIELDS`
    becomes bracketed names (``svg[model]``, ``svg[reasoning][effort]``), as the API
    reads them; any other value is text (JSON for a structure from ``extra_body``)."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        if isinstance(value, Mapping) and (nested or key in _NESTED_FIELDS):
            inner = {f"{key}[{k}]": v for k, v in value.items() if v is not None}
            out.extend(_form_fields(inner, nested=True))
        else:
            out.append((key, _wire_text(value)))
    return tuple(out)


def _wire_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value)


def _type_error_to_validation(exc: Exception) -> ValidationError:
    """attrs' validators raise TypeError/ValueError; name the parameter instead.

    Also names the parameter when ``__init__`` itself refuses the call: an
    unknown keyword (suggest ``extra_body``) or a missing required one.
    """
    text = str(exc.args[0]) if exc.args else ""
    unknown = re.search(r"unexpected keyword argument '(\w+)'", text)
    if unknown:
        name = unknown.group(1)
        return ValidationError(
            name, f"{name} is not a parameter of this call; pass it in extra_body"
        )
    missing = re.search(r"missing \d+ required (?:keyword-only )?arguments?: '(\w+)'", text)
    if missing:
        name = missing.group(1)
        return ValidationError(name, f"{name} is required")
    attribute = exc.args[1] if len(exc.args) > 1 else None
    name = getattr(attribute, "name", None)
    if name is None:
        found = re.match(r"'(\w+)'", str(exc.args[0]) if exc.args else "")
        name = found.group(1) if found else "request"
    if isinstance(exc, TypeError) and len(exc.args) > 3:
        expected, value = exc.args[2], exc.args[3]
        kind = getattr(expected, "__name__", str(expected))
        return ValidationError(
            name, f"{name} must be {kind}, not {type(value).__name__} ({value!r})"
        )
    message = str(exc.args[0]) if exc.args else str(exc)
    return ValidationError(name, message.replace(f"'{name}'", name, 1))


@attrs.frozen(kw_only=True)
class _Base:
    endpoint: ClassVar[Endpoint]
    path: ClassVar[str]

    extra_body: Mapping[str, Any] = attrs.field(
        factory=dict,
        validator=instance_of(Mapping),  # type: ignore[type-abstract]
        repr=False,
    )

    @classmethod
    def build(cls: type[_P], **kwargs: Any) -> _P:
        """Make the parameters and check them against the model's rules.

        Raises:
            ValidationError: a value has the wrong type or breaks a rule; its
                ``param`` names the parameter.
        """
        if kwargs.get("extra_body") is None:
            kwargs.pop("extra_body", None)
        try:
            params = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ValidationError):
                raise
            raise _type_error_to_validation(exc) from None
        validate(cast("Params", params))
        return params

    @property
    def images(self) -> int:
        """How many images the call asks for (its cost against the rate limit)."""
        n = getattr(self, "n", None)
        extra_n = self.extra_body.get("n")
        if isinstance(extra_n, int) and not isinstance(extra_n, bool):
            n = extra_n
        return n if isinstance(n, int) and n > 0 else 1

    def _values(self) -> dict[str, Any]:
        skip = {"extra_body", "image", "image_refs", "mask", "markup"}
        out = {
            a.name: getattr(self, a.name)
            for a in attrs.fields(type(self))
            if a.name not in skip and getattr(self, a.name) is not None
        }
        out.update(self.extra_body)
        return out


@attrs.frozen(kw_only=True)
class GenerateParams(_Base):
    """The body of ``POST /images/generations`` (sent as JSON)."""

    endpoint: ClassVar[Endpoint] = "generate"
    path: ClassVar[str] = "/images/generations"

    prompt: str = attrs.field(validator=instance_of(str))
    model: str | None = attrs.field(default=None, validator=_opt_str)
    n: int | None = attrs.field(default=None, validator=_opt_n)
    quality: str | None = attrs.field(default=None, validator=_opt_str)
    response_format: str | None = attrs.field(default=None, validator=_opt_str)
    output_format: str | None = attrs.field(default=None, validator=_opt_str)
    output_compression: int | None = attrs.field(default=None, validator=_opt_compression)
    size: str | None = attrs.field(default=None, validator=_opt_str)
    moderation: str | None = attrs.field(default=None, validator=_opt_str)
    background: str | None = attrs.field(default=None, validator=_opt_str)
    style: str | None = attrs.field(default=None, validator=_opt_str)
    user: str | None = attrs.field(default=None, validator=_opt_str)
    stream: bool | None = attrs.field(default=None, validator=_opt_bool)
    partial_images: int | None = attrs.field(default=None, validator=_opt_partials)
    complexity: str | None = attrs.field(default=None, validator=_opt_str)
    frame_count: int | None = attrs.field(default=None, validator=_opt_int)
    frame_duration_ms: int | None = attrs.field(default=None, validator=_opt_int)
    svg: Mapping[str, Any] | None = attrs.field(default=None, validator=_opt_mapping)
    safety_identifier: str | None = attrs.field(default=None, validator=_opt_str)

    def to_json(self) -> dict[str, Any]:
        """The JSON body: every parameter that is not None, then ``extra_body``."""
        return self._values()

    def encode(self) -> Body:
        """The body as bytes, ready to send.

        Raises:
            ValidationError: a value cannot be sent as JSON (see :func:`encode_json`).
        """
        return encode_json(self.to_json(), self.extra_body)


@attrs.frozen(kw_only=True)
class _FormParams(_Base):
    image: tuple[ImageFile, ...] = attrs.field(validator=_images)

    def to_form(self) -> Form:
        """The multipart body: ``image`` (or ``image[]`` for several), ``mask``, fields."""
        name = "image" if len(self.image) == 1 else "image[]"
        files = [(name, file) for file in self.image]
        for name in ("mask", "markup"):
            extra_file: ImageFile | None = getattr(self, name, None)
            if extra_file is not None:
                files.append((name, extra_file))
        return Form(_form_fields(self._values()), tuple(files))

    def encode(self) -> Body:
        """The multipart body as bytes, ready to send.

        Raises:
            ValidationError: a value or a file name cannot be sent (see :func:`encode_form`).
        """
        try:
            form = self.to_form()
        except (TypeError, ValueError) as exc:
            raise ValidationError("extra_body", f"extra_body: cannot be sent: {exc}") from None
        several = len(self.image) > 1
        params = [
            name if name in ("mask", "markup") or not several else f"image[{i}]"
            for i, (name, _) in enumerate(form.files)
        ]
        return form.encode(params, self.extra_body)


@attrs.frozen(kw_only=True)
class EditParams(_FormParams):
    """The body of ``POST /images/edits`` (sent as multipart form data)."""

    endpoint: ClassVar[Endpoint] = "edit"
    path: ClassVar[str] = "/images/edits"

    prompt: str = attrs.field(validator=instance_of(str))
    mask: ImageFile | None = attrs.field(default=None, validator=optional(instance_of(ImageFile)))
    model: str | None = attrs.field(default=None, validator=_opt_str)
    n: int | None = attrs.field(default=None, validator=_opt_n)
    size: str | None = attrs.field(default=None, validator=_opt_str)
    quality: str | None = attrs.field(default=None, validator=_opt_str)
    response_format: str | None = attrs.field(default=None, validator=_opt_str)
    output_format: str | None = attrs.field(default=None, validator=_opt_str)
    output_compression: int | None = attrs.field(default=None, validator=_opt_compression)
    background: str | None = attrs.field(default=None, validator=_opt_str)
    input_fidelity: str | None = attrs.field(default=None, validator=_opt_str)
    user: str | None = attrs.field(default=None, validator=_opt_str)
    stream: bool | None = attrs.field(default=None, validator=_opt_bool)
    partial_images: int | None = attrs.field(default=None, validator=_opt_partials)
    markup: ImageFile | None = attrs.field(default=None, validator=_opt_file)
    """A transparent PNG drawn over the first image to guide the edit (sent as a file)."""
    complexity: str | None = attrs.field(default=None, validator=_opt_str)
    frame_count: int | None = attrs.field(default=None, validator=_opt_int)
    frame_duration_ms: int | None = attrs.field(default=None, validator=_opt_int)
    svg: Mapping[str, Any] | None = attrs.field(default=None, validator=_opt_mapping)
    safety_identifier: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class VariationParams(_FormParams):
    """The body of ``POST /images/variations`` (sent as multipart form data)."""

    endpoint: ClassVar[Endpoint] = "variation"
    path: ClassVar[str] = "/images/variations"

    model: str | None = attrs.field(default=None, validator=_opt_str)
    n: int | None = attrs.field(default=None, validator=_opt_n)
    size: str | None = attrs.field(default=None, validator=_opt_str)
    response_format: str | None = attrs.field(default=None, validator=_opt_str)
    user: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class JsonEditParams(_Base):
    """The body of ``POST /images/edits`` sent as JSON: images by reference (GPT image models)."""

    endpoint: ClassVar[Endpoint] = "edit"
    path: ClassVar[str] = "/images/edits"

    image_refs: tuple[ImageRef, ...] = attrs.field(validator=_refs)
    """The images to edit, sent as ``images``."""
    prompt: str = attrs.field(validator=instance_of(str))
    mask: ImageRef | None = attrs.field(default=None, validator=optional(instance_of(ImageRef)))
    model: str | None = attrs.field(default=None, validator=_opt_str)
    n: int | None = attrs.field(default=None, validator=_opt_n)
    size: str | None = attrs.field(default=None, validator=_opt_str)
    quality: str | None = attrs.field(default=None, validator=_opt_str)
    output_format: str | None = attrs.field(default=None, validator=_opt_str)
    output_compression: int | None = attrs.field(default=None, validator=_opt_compression)
    background: str | None = attrs.field(default=None, validator=_opt_str)
    input_fidelity: str | None = attrs.field(default=None, validator=_opt_str)
    moderation: str | None = attrs.field(default=None, validator=_opt_str)
    user: str | None = attrs.field(default=None, validator=_opt_str)
    stream: bool | None = attrs.field(default=None, validator=_opt_bool)
    partial_images: int | None = attrs.field(default=None, validator=_opt_partials)
    complexity: str | None = attrs.field(default=None, validator=_opt_str)
    frame_count: int | None = attrs.field(default=None, validator=_opt_int)
    frame_duration_ms: int | None = attrs.field(default=None, validator=_opt_int)
    svg: Mapping[str, Any] | None = attrs.field(default=None, validator=_opt_mapping)
    safety_identifier: str | None = attrs.field(default=None, validator=_opt_str)

    def to_json(self) -> dict[str, Any]:
        """The JSON body: ``images``, ``mask``, every parameter that is not None, ``extra_body``."""
        out: dict[str, Any] = {"images": [ref.to_json() for ref in self.image_refs]}
        if self.mask is not None:
            out["mask"] = self.mask.to_json()
        out.update(self._values())
        return out

    def encode(self) -> Body:
        """The body as bytes, ready to send (see :func:`encode_json`)."""
        return encode_json(self.to_json(), self.extra_body)


Params = GenerateParams | EditParams | VariationParams | JsonEditParams

_INT_FIELDS = frozenset(
    {"n", "output_compression", "partial_images", "frame_count", "frame_duration_ms"}
)
_BRACKETED = re.compile(r"([A-Za-z_]\w*)((?:\[[^\[\]]+\])+)")
_BOOLS: Mapping[str, bool] = {"true": True, "false": False}


def _from_form_value(name: str, value: str) -> object:
    if name == "stream":
        if value.lower() not in _BOOLS:
            raise ValidationError(name, f"{name} must be true or false, not {value!r}")
        return _BOOLS[value.lower()]
    if name in _INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            raise ValidationError(name, f"{name} must be an integer, not {value!r}") from None
    return value


def from_wire(
    endpoint: Endpoint,
    fields: Mapping[str, Any],
    files: Mapping[str, tuple[ImageFile, ...]] | None = None,
    *,
    as_json: bool = False,
) -> Params:
    """Read a request as a server receives it, and check it as the client would.

    ``fields`` is the JSON body of a generation or (``as_json``) of an edit by
    reference, or the text fields of a form (strings); ``files`` maps
    ``image``/``image[]``/``mask`` to uploaded files. Names the class does not
    know go to ``extra_body``.

    Raises:
        ValidationError: a required part is missing, or a value breaks a rule.
    """
    if as_json and endpoint == "edit":
        return _json_edit_from_wire(fields)
    cls: type[GenerateParams] | type[EditParams] | type[VariationParams] = {
        "generate": GenerateParams,
        "edit": EditParams,
        "variation": VariationParams,
    }[endpoint]
    known = {a.name for a in attrs.fields(cls)} - {"extra_body", "image", "mask", "markup"}
    files = files or {}
    is_form = endpoint != "generate"
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in (_nested(fields) if is_form else fields).items():
        if name in known:
            kwargs[name] = _from_form_value(name, value) if is_form else value
        else:
            extra[name] = value
    if "prompt" in known and "prompt" not in kwargs:
        raise ValidationError("prompt", "prompt is required")
    if is_form:
        images = tuple(files.get("image", ())) + tuple(files.get("image[]", ()))
        if not images:
            raise ValidationError("image", "image is required")
        kwargs["image"] = images
        for name in ("mask", "markup"):
            found = files.get(name, ())
            if found:
                if endpoint != "edit":
                    raise ValidationError(name, f"{name} is only accepted by edits")
                kwargs[name] = found[0]
    if extra:
        kwargs["extra_body"] = extra
    return cls.build(**kwargs)


def _nested(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Form fields with bracketed names (``svg[reasoning][effort]``) gathered into mappings."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        found = _BRACKETED.fullmatch(name)
        if found is None:
            out[name] = value
            continue
        keys = [found.group(1), *re.findall(r"\[([^\[\]]+)\]", found.group(2))]
        target = out
        for key in keys[:-1]:
            inner = target.get(key)
            if not isinstance(inner, dict):
                inner = target[key] = {}
            target = inner
        target[keys[-1]] = value
    return out


def _json_edit_from_wire(body: Mapping[str, Any]) -> JsonEditParams:
    known = {a.name for a in attrs.fields(JsonEditParams)} - {"extra_body", "image_refs", "mask"}
    images = body.get("images")
    if not isinstance(images, list) or not images:
        raise ValidationError("images", "images must be an array of 1 to 16 image references")
    refs = tuple(ImageRef.from_json(item, f"images[{i}]") for i, item in enumerate(images))
    kwargs: dict[str, Any] = {"image_refs": refs}
    if body.get("mask") is not None:
        kwargs["mask"] = ImageRef.from_json(body["mask"], "mask")
    extra = {k: v for k, v in body.items() if k not in known and k not in ("images", "mask")}
    kwargs.update((k, v) for k, v in body.items() if k in known and v is not None)
    if "prompt" not in kwargs:
        raise ValidationError("prompt", "prompt is required")
    if extra:
        kwargs["extra_body"] = extra
    return JsonEditParams.build(**kwargs)
