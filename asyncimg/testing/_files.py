"""The emulator's Files API: ``/v1/files``, where a batch's input and output live.

``POST /v1/files`` (multipart ``file`` and ``purpose``; a ``batch`` file of at
most 200 MB), ``GET /v1/files`` (``purpose`` filters it), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``. A batch's output and
error files are kept here too (purpose ``batch_output``). A JSON edit may name
an uploaded file as ``{"file_id"}`` (:mod:`._refs`); ``Emulator.add_file()``
keeps one without a request. Errors have the API's shape (:mod:`._errors`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from aiohttp import BodyPartReader, web

from ._errors import Answer, refuse

__all__ = ["FilesAPI", "StoredFile", "new_id", "ok"]

_MAX_FILE = 200 * 1024 * 1024


def new_id(prefix: str) -> str:
    """A fresh id such as ``file-...`` or ``batch_...``."""
    return f"{prefix}{secrets.token_hex(12)}"


def ok(body: Mapping[str, Any]) -> Answer:
    """A 200 with ``body`` as JSON."""
    return Answer(200, json.dumps(body).encode())


@attrs.define
class StoredFile:
    """A file the Files API holds."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """The file object the API answers."""
        return {
            "id": self.id, "object": "file", "bytes": len(self.data),
            "created_at": self.created_at, "filename": self.filename,
            "purpose": self.purpose, "status": "processed", "status_details": None,
        }


class FilesAPI:
    """The files an emulator holds, by id (see the module doc)."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}

    async def handle(self, request: web.Request, parts: Sequence[str]) -> Answer:
        """Answer a request to ``/v1/files...``; ``parts`` is its path after ``/v1/``, split.

        Raises:
            Refusal: no such file (404), a bad upload (400), or no such route (404).
        """
        method = request.method
        if len(parts) == 1 and method == "POST":
            return ok(await self._upload(request))
        if len(parts) == 1 and method == "GET":
            listed = [f.to_json() for f in self.files.values()]
            purpose = request.query.get("purpose")
            listed = [f for f in listed if purpose is None or f["purpose"] == purpose]
            return ok({"object": "list", "data": listed, "has_more": False})
        if len(parts) >= 2:
            file = self.files.get(parts[1])
            if file is None:
                refuse(404, f"No such File object: {parts[1]}", param="id")
            if len(parts) == 2 and method == "GET":
                return ok(file.to_json())
            if len(parts) == 2 and method == "DELETE":
                del self.files[file.id]
                return ok({"id": file.id, "object": "file", "deleted": True})
            if len(parts) == 3 and parts[2] == "content" and method == "GET":
                return Answer(200, file.data, {}, "application/octet-stream")
        refuse(404, f"Invalid URL ({method} {request.path})")

    def add_file(self, data: bytes, filename: str, purpose: str) -> str:
        """Keep a file as ``POST /v1/files`` does; returns its id (``file-...``)."""
        file = StoredFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[file.id] = file
        return file.id

    def file_data(self, file_id: str) -> bytes | None:
        """The bytes of an uploaded file, or None when there is no such file."""
        file = self.files.get(file_id)
        return None if file is None else file.data

    async def _upload(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "multipart/form-data":
            refuse(400, "Invalid Content-Type header, expected multipart/form-data.")
        fields: dict[str, str] = {}
        data: bytes | None = None
        filename = "upload"
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            raw = bytes(await part.read(decode=True))
            if part.name == "file":
                data, filename = raw, part.filename or filename
            else:
                fields[part.name] = raw.decode("utf-8", "replace")
        purpose = fields.get("purpose")
        if not purpose:
            refuse(400, "Missing required parameter: 'purpose'.", param="purpose")
        if data is None:
            refuse(400, "Missing required parameter: 'file'.", param="file")
        if purpose == "batch" and len(data) > _MAX_FILE:
            refuse(400, f"File is too large: {len(data)} bytes, at most {_MAX_FILE}.",
                   param="file")
        return self.files[self.add_file(data, filename, purpose)].to_json()
