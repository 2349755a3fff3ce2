"""The emulator's Azure OpenAI mode (``Emulator(azure=True)``, ``asyncimg serve --azure``).

Azure serves ``/openai/deployments/{deployment}/images/{generations|edits|variations}``
and wants ``?api-version=YYYY-MM-DD[-preview]`` on every request and the key
as an ``api-key`` header (or an Entra ID token as ``Authorization: Bearer``).
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
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")


def azure_route(path: str) -> tuple[str, Endpoint] | None:
    """``(deployment, endpoint)`` of an Azure images path, or None for any other path."""
    found = _PATH.match(path)
    if found is None:
        return None
    return found.group(1), _ENDPOINTS[found.group(2)]


def azure_refusal(
    headers: Mapping[str, str], query: Mapping[str, str], api_key: str | None
) -> tuple[int, dict[str, Any]] | None:
    """Azure's answer to a request without a valid key or api-version, or None to go on.

    With ``api_key`` None any credential (or none) is accepted; otherwise the
    ``api-key`` header, or a bearer token equal to the key.
    """
    if api_key is not None:
        given = headers.get("api-key")
        if given is None:
            scheme, _, token = headers.get("Authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
            return 401, {"error": {"code": "401", "message": _DENIED}}
    version = query.get("api-version")
    if not version:
        return 404, {"error": {"code": "404", "message": "Resource not found"}}
    if not _VERSION.match(version):
        return 400, {"error": {"code": "BadRequest", "message": "API version not supported"}}
    return None


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
