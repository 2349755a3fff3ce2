"""The API key: how the emulator checks it, and masks it in errors and the journal.

With ``api_key`` None the emulator accepts any request, with or without a
key. Otherwise it expects ``Authorization: Bearer KEY`` and answers 401
``invalid_api_key`` (the API's own two messages: no key, a wrong key shown
masked). In Azure mode the key is ``api-key`` (a bearer token is an Entra ID
token, never the key: :func:`._azure.azure_refusal`) and a missing
or malformed ``api-version`` is refused too (:func:`._azure.azure_refusal`).
The journal keeps ``Authorization`` and ``api-key`` masked as the API masks a
key: its first 3 and last 4 characters.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from ._azure import azure_refusal
from ._errors import Answer, Refusal, refuse

__all__ = ["check_key", "mask_key", "redacted"]

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
    "or as the password field (with blank username) if you're accessing the API "
    "from your browser and are prompted for a username and password. You can obtain "
    "an API key from https://platform.openai.com/account/api-keys."
)


def mask_key(key: str) -> str:
    """Mask an API key as the API does in its errors: the first 3 and last 4 characters.

    Keys of 8 characters or fewer are masked entirely.
    """
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * min(len(key) - 7, 20)}{key[-4:]}"


def redacted(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with the values of ``Authorization`` and ``api-key`` masked."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in ("authorization", "api-key"):
            scheme, _, token = value.partition(" ")
            value = f"{scheme} {mask_key(token)}" if token else mask_key(value)
        out[name] = value
    return out


def check_key(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    api_key: str | None,
    *,
    azure: bool,
    azure_token: str | None = None,
) -> None:
    """Let a request with the expected key pass.

    Raises:
        Refusal: the key is missing or wrong (401), or, in Azure mode,
            ``api-version`` is (404, 400).
    """
    if azure:
        refusal = azure_refusal(headers, query, api_key, azure_token)
        if refusal is not None:
            status, body = refusal
            raise Refusal(Answer(status, json.dumps(body).encode()))
        return
    if api_key is None:
        return
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        refuse(401, _NO_KEY, code="invalid_api_key")
    if not secrets.compare_digest(token.encode(), api_key.encode()):
        refuse(
            401,
            f"Incorrect API key provided: {mask_key(token)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
