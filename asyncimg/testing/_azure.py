"""The emulator's Azure OpenAI mode (``Emulator(azure=True)``, ``asyncimg serve --azure``).

Azure serves ``/openai/deployments/{deployment}/images/{generations|edits|variations}``
and wants ``?api-version=YYYY-MM-DD[-preview]`` on every request and the key
as an ``api-key`` header; ``Authorization: Bearer`` carries an Entra ID token,
never the key (the emulator accepts the token it is given as ``azure_token``).
Its errors have its own shape (``{"error": {"code": "401", "message": ...}}``)
and its content filter answers 400 with code ``contentFilter`` and the
category results in ``inner_error``. These functions are pure; the Emulator
composes them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from .._params import Endpoint

__all__ = ["azure_content_filter", "azure_refusal", "azure_route"]

_PATH = re.compile(r"^/openai/deployments/([^/]+)/images/(generations|edits|variations)$")
_ENDPOINTS: Mapping[str, Endpoint] = {
    "generations": "generate",
    "edits": "edit",
    "variations": "variation",
}
_VERSION = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$")
_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
_BAD_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")


def azure_route(path: str) -> tuple[str, Endpoint] | None:
    """``(deployment, endpoint)`` of an Azure images path, or None for any other path."""
    found = _PATH.match(path)
    if found is None:
        return None
    return found.group(1), _ENDPOINTS[found.group(2)]


def azure_refusal(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    api_key: str | None,
    token: str | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """Azure's answer to a request without a valid key or api-version, or None to go on.

    With ``api_key`` and ``token`` None any credential (or none) is accepted;
    otherwise the ``api-key`` header equal to ``api_key``, or a bearer token
    equal to ``token`` (an Entra ID token: a key sent as a bearer token is
    refused, as Azure refuses it).
    """
    if api_key is not None or token is not None:
        given = headers.get("api-key")
        scheme, _, bearer = headers.get("Authorization", "").partition(" ")
        if given is not None:
            if api_key is None or not _same(given, api_key):
                return 401, {"error": {"code": "401", "message": _DENIED}}
        elif scheme.lower() == "bearer" and bearer.strip():
            if token is None or not _same(bearer.strip(), token):
                return 401, {"error": {"code": "401", "message": _BAD_TOKEN}}
        else:
            return 401, {"error": {"code": "401", "message": _DENIED}}
    version = query.get("api-version")
    if not version:
        return 404, {"error": {"code": "404", "message": "Resource not found"}}
    if not _VERSION.match(version):
        return 400, {"error": {"code": "BadRequest", "message": "API version not supported"}}
    return None


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def azure_content_filter(prompt: str) -> dict[str, Any]:
    """The body of Azure's content-filter refusal of an image prompt."""
    results = {name: {"filtered": False, "severity": "safe"} for name in _CATEGORIES}
    results["violence"] = {"filtered": True, "severity": "high"}
    return {
        "error": {
            "code": "contentFilter",
            "message": "Your task failed as a result of our safety system.",
            "param": "prompt",
            "type": None,
            "inner_error": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_results": results,
                "revised_prompt": prompt,
            },
        }
    }
