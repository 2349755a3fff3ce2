"""Azure OpenAI: the client options that make an AsyncImagesClient speak to a deployment.

:func:`azure_options` is pure: it reads the arguments (and, for what is left
out, ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY`` and
``OPENAI_API_VERSION``, the official SDK's variables) and returns the keyword
arguments of :class:`~asyncimg.AsyncImagesClient` that send requests to
``{endpoint}/openai/deployments/{deployment}/images/...?api-version=...`` with
the key as ``api-key`` (never ``Authorization``), or with
``Authorization: Bearer`` from ``token_provider``, asked again for every request.
Without a deployment, each call's ``model`` names it, as in the SDK.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from ._config import MODEL_PLACEHOLDER
from ._exceptions import ValidationError

__all__ = ["azure_base_url", "azure_options"]


def azure_base_url(endpoint: str, deployment: str | None) -> str:
    """``{endpoint}/openai/deployments/{deployment}``; ``{model}`` stands for a missing deployment.

    Raises:
        ValidationError: the endpoint is not an http(s) URL with a host and no query.
    """
    parts = urlsplit(endpoint.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or parts.query:
        raise ValidationError(
            "endpoint",
            f"endpoint {endpoint!r} is not an http(s) URL such as https://NAME.openai.azure.com",
        )
    root = endpoint.strip().rstrip("/")
    if root.endswith("/openai"):
        root = root[: -len("/openai")]
    name = MODEL_PLACEHOLDER if deployment is None else quote(deployment, safe="")
    return f"{root}/openai/deployments/{name}"


def azure_options(
    *,
    endpoint: str | None,
    deployment: str | None,
    api_version: str | None,
    api_key: str | None,
    token_provider: object,
    options: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The AsyncImagesClient keyword arguments of an Azure OpenAI client.

    ``options`` are the caller's other client arguments; its ``default_headers``
    and ``default_query`` are kept (``api-version`` and ``api-key`` added).

    Raises:
        ValidationError: the endpoint or the api version is missing, no credential
            (or both) is given, or ``options`` names what Azure decides itself.
    """
    env = os.environ if environ is None else environ
    for name in ("base_url", "api_key", "organization", "project"):
        if options.get(name) is not None:
            raise ValidationError(
                name, f"{name} is not an option of an Azure client (azure() sets what it needs)"
            )
    endpoint = endpoint or env.get("AZURE_OPENAI_ENDPOINT")
    if not endpoint:
        raise ValidationError(
            "endpoint", "no Azure endpoint: pass endpoint= or set AZURE_OPENAI_ENDPOINT"
        )
    api_version = api_version or env.get("OPENAI_API_VERSION")
    if not api_version:
        raise ValidationError(
            "api_version", "no API version: pass api_version= or set OPENAI_API_VERSION"
        )
    if deployment is not None and (not isinstance(deployment, str) or not deployment.strip()):
        raise ValidationError("deployment", "deployment must be a non-empty string")
    if api_key is not None and token_provider is not None:
        raise ValidationError("api_key", "pass api_key= or token_provider=, not both")
    if token_provider is None:
        api_key = api_key or env.get("AZURE_OPENAI_API_KEY")
        if not api_key:
            raise ValidationError(
                "api_key",
                "no credential: pass api_key= (or set AZURE_OPENAI_API_KEY) or token_provider=",
            )
    elif not callable(token_provider):
        raise ValidationError("token_provider", "token_provider must be a callable")
    headers = dict(options.get("default_headers") or {})
    if api_key:
        headers["api-key"] = api_key
    query = dict(options.get("default_query") or {})
    query["api-version"] = api_version
    out = dict(options)
    out.update(
        base_url=azure_base_url(endpoint, deployment),
        api_key="",  # never $OPENAI_API_KEY: Azure takes its key as api-key
        default_headers=headers,
        default_query=query,
        token_provider=token_provider,
    )
    return out
