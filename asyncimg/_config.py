"""Where a request goes and what it carries, decided without I/O.

* URLs: a base URL may carry its own query (a gateway's ``?key=``, Azure's
  ``?api-version=``); :func:`request_url` puts the endpoint's path before it
  and merges ``default_query`` and a call's ``extra_query`` after it. A base
  URL holding ``{model}`` names the deployment per call (Azure without a fixed
  deployment).
* Headers: :func:`merge_headers` layers the client's own, ``default_headers``
  and a call's ``extra_headers``, case-insensitively, later layers winning.
* Proxies: :class:`ProxyConfig` picks the proxy of a URL: ``proxy=`` for every
  URL, else ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` minus ``NO_PROXY``,
  read when the client is made (as the official SDK does).
* TLS: :func:`ssl_context` turns ``ssl=`` (a context or a CA bundle path) into
  a context; without one, the default context honours ``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` as they are when the session is made.
"""

from __future__ import annotations

import functools
import os
import re
import ssl as _ssl
import urllib.request
from collections.abc import Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs
from multidict import CIMultiDict

from ._checks import check_header_value
from ._exceptions import ValidationError

__all__ = [
    "ProxyConfig",
    "QueryValue",
    "SSLOption",
    "check_headers",
    "check_query",
    "merge_headers",
    "redact_url",
    "request_url",
    "split_base_url",
    "ssl_context",
    "with_query",
]

QueryValue: TypeAlias = "str | int | float | bool"
SSLOption: TypeAlias = "_ssl.SSLContext | str | os.PathLike[str] | None"

MODEL_PLACEHOLDER = "{model}"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP header name (RFC 9110's token)."""


def check_headers(value: object, param: str) -> dict[str, str]:
    """A mapping of header names to string values, checked.

    Raises:
        ValidationError: not a mapping of header names to strings, or a value an
            HTTP header cannot carry (see :func:`~asyncimg._checks.check_header_value`).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(param, f"{param} must be a mapping of header names to strings")
    out: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.match(name) or not isinstance(text, str):
            raise ValidationError(
                param, f"{param}: {name!r} must be a header name mapped to a string value"
            )
        try:
            check_header_value(f"{param}[{name!r}]", text)
        except ValidationError as exc:
            raise ValidationError(param, exc.message) from None
        out[name] = text
    return out


def check_query(value: object, param: str) -> dict[str, str]:
    """A mapping of query parameters to str/int/float/bool values, as strings.

    Raises:
        ValidationError: not such a mapping.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(param, f"{param} must be a mapping of parameter names to values")
    out: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name or not isinstance(item, (str, int, float)):
            raise ValidationError(
                param, f"{param}: {name!r} must map a name to a str, int, float or bool"
            )
        if isinstance(item, bool):
            out[name] = "true" if item else "false"
        else:
            out[name] = str(item)
    return out


def split_base_url(base_url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A base URL without its query (and trailing slash), and that query's pairs.

    Raises:
        ValidationError: the URL is not http(s) with a host, or it carries a user or
            password (``http://user:pass@host``): credentials go in ``api_key`` or
            ``default_headers``, never in a URL that is logged and shown.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValidationError(
            "base_url", f"base_url {redact_url(base_url)!r} is not an http(s) URL with a host"
        )
    if "@" in parts.netloc:
        raise ValidationError(
            "base_url",
            f"base_url {redact_url(base_url)!r} carries a user or password; pass the "
            "credentials as api_key (or default_headers) instead",
        )
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return base, query


def request_url(
    base: str,
    path: str,
    base_query: tuple[tuple[str, str], ...] = (),
    *queries: Mapping[str, str],
    model: str | None = None,
) -> str:
    """``base + path``, with the base URL's query, then each of ``queries`` (later wins).

    A ``{model}`` in ``base`` is replaced by ``model``, quoted.

    Raises:
        ValidationError: ``base`` holds ``{model}`` and no model is given.
    """
    if MODEL_PLACEHOLDER in base:
        if not model:
            raise ValidationError(
                "model",
                "model is required: this client has no deployment, so each call's model "
                "names it (pass model=, or deployment= to AsyncImagesClient.azure)",
            )
        base = base.replace(MODEL_PLACEHOLDER, quote(model, safe=""))
    if not any(queries):
        if not base_query:
            return base + path
        return f"{base}{path}?{urlencode(base_query)}"
    merged: dict[str, str] = {}
    for query in queries:
        merged.update(query)
    pairs = [(k, v) for k, v in base_query if k not in merged] + list(merged.items())
    return f"{base}{path}?{urlencode(pairs)}"


def with_query(url: str, query: Mapping[str, str]) -> str:
    """``url`` with the pairs of ``query`` whose names it does not already carry."""
    if not query:
        return url
    parts = urlsplit(url)
    own = parse_qsl(parts.query, keep_blank_values=True)
    names = {name for name, _ in own}
    pairs = own + [(k, v) for k, v in query.items() if k not in names]
    return urlunsplit(parts._replace(query=urlencode(pairs)))


def merge_headers(*layers: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers layered case-insensitively: a later layer replaces a name of an earlier one."""
    merged: CIMultiDict[str] = CIMultiDict()
    for layer in layers:
        merged.update(layer)
    return merged


def without_query(url: str) -> str:
    """The URL without its query and fragment (a download URL's query may be a signature)."""
    return url.split("?", 1)[0].split("#", 1)[0]


def redact_url(url: str) -> str:
    """The URL with the password of its userinfo (a proxy's credentials) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@attrs.frozen
class ProxyConfig:
    """Which proxy a URL goes through: ``explicit`` for all, else the environment's.

    ``environment`` is ``urllib.request.getproxies_environment()`` (scheme ->
    proxy URL, ``no`` -> the ``NO_PROXY`` list).
    """

    explicit: str | None = None
    environment: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def build(cls, proxy: str | None, environ: Mapping[str, str] | None = None) -> ProxyConfig:
        """The explicit ``proxy`` (checked), or the proxies of the environment.

        Raises:
            ValidationError: ``proxy`` is not an http(s) URL.
        """
        if proxy is not None:
            parts = urlsplit(proxy) if isinstance(proxy, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                shown = redact_url(proxy) if isinstance(proxy, str) else type(proxy).__name__
                raise ValidationError("proxy", f"proxy {shown!r} is not an http(s) URL")
            return cls(explicit=proxy)
        if environ is None:
            return cls(environment=urllib.request.getproxies_environment())
        return cls(environment=_proxies_of(environ))

    def for_url(self, url: str) -> str | None:
        """The proxy for ``url``, or None to connect directly."""
        if self.explicit is not None:
            return self.explicit
        env = self.environment
        if not env:
            return None
        parts = urlsplit(url)
        proxy = env.get(parts.scheme) or env.get("all")
        if proxy is None:
            return None
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if "no" in env and bypass(parts.netloc, env):
            return None
        return proxy


def _proxies_of(environ: Mapping[str, str]) -> dict[str, str]:
    """``getproxies_environment()`` for a given mapping (lowercase names win, as in urllib)."""
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            proxies.setdefault(name[:-6].lower(), value)
    for name, value in environ.items():
        if value and name.endswith("_proxy"):
            proxies[name[:-6]] = value
    return proxies


@functools.lru_cache(maxsize=4)
def _default_context(cafile: str | None, capath: str | None) -> _ssl.SSLContext:
    return _ssl.create_default_context(cafile=cafile, capath=capath)


def ssl_context(value: Any) -> _ssl.SSLContext:
    """The TLS context for ``ssl=``: the context itself, one trusting a CA bundle, or the default.

    The default trusts the system's CAs, or ``$SSL_CERT_FILE``/``$SSL_CERT_DIR``
    when set (read now, so a variable set after import counts).

    Raises:
        ValidationError: not a context or a path, or the bundle cannot be loaded.
    """
    if isinstance(value, _ssl.SSLContext):
        return value
    if value is None:
        cafile = os.environ.get("SSL_CERT_FILE") or None
        capath = os.environ.get("SSL_CERT_DIR") or None
        if cafile is None and capath is None:
            return _default_context(None, None)
        try:
            return _default_context(cafile, capath)
        except (OSError, _ssl.SSLError) as exc:
            raise ValidationError(
                "ssl", f"SSL_CERT_FILE/SSL_CERT_DIR cannot be loaded: {exc}"
            ) from None
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        try:
            if os.path.isdir(path):
                return _default_context(None, path)
            return _default_context(path, None)
        except (OSError, _ssl.SSLError) as exc:
            raise ValidationError(
                "ssl", f"ssl: cannot load the CA bundle {path!r}: {exc}"
            ) from None
    raise ValidationError(
        "ssl", f"ssl must be an ssl.SSLContext or a CA bundle path, not {type(value).__name__}"
    )
