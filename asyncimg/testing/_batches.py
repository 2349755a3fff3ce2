"""The emulator's Batch API: ``/v1/batches``, at a pace tests set.

Its input and output files are the Files API's (``/v1/files``, :mod:`._files`).

Batches: ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``,
``metadata``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
``GET /v1/batches`` (newest first, ``limit`` and ``after``).

A batch moves on when it is looked at, never behind the test's back: each
``GET`` of it counts as a poll. It is ``validating`` when created, ``in_progress``
from the first poll, and ends after :attr:`BatchPace.polls` polls, or once
:attr:`BatchPace.seconds` have passed on the emulator's clock, with the outcome
the pace names:

* ``completed``: every line is answered as the direct endpoint would answer it
  (its own validation and content policy included, but not the images-per-minute
  limit: the Batch API has limits of its own). 200s go to the output file, other
  statuses to the error file, both in shuffled order when ``shuffle``.
* ``failed``: the input did not validate; ``errors`` says why, no output.
* ``expired``: the first half of the lines were answered, the rest are in the
  error file with code ``batch_expired``.
* ``cancelled`` happens through ``POST .../cancel``: ``cancelling`` until the next
  poll, then ``cancelled``; a batch that was in progress keeps the answers of its
  first half, the other lines are in the error file as ``batch_cancelled``.

A malformed input (a line that is not JSON, a missing ``custom_id``, a repeated
one, a ``url`` other than the batch's endpoint) fails the batch whatever the pace,
as the real API does at validation.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
from aiohttp import web
from attrs.validators import ge, in_, instance_of, optional

from ._errors import Answer, refuse
from ._files import FilesAPI, StoredFile, new_id, ok

__all__ = ["BatchAPI", "BatchPace", "Outcome", "Render"]

Outcome = Literal["completed", "failed", "expired"]

Render = Callable[[str, Mapping[str, Any]], tuple[int, bytes]]
"""``(endpoint path, body) -> (status, JSON body)``: how one batch line is answered."""

_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits")
_MAX_LINES = 50_000
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@attrs.frozen
class BatchPace:
    """How the next batches go (see the module docstring).

    Args:
        polls: polls (``GET``) of a batch before it ends (0: at the first poll).
        seconds: or end once this many seconds passed since its creation (None: polls only).
        outcome: ``completed``, ``failed`` or ``expired``.
        shuffle: write output lines in a random order, as the API may.
    """

    polls: int = attrs.field(default=2, validator=[instance_of(int), ge(0)])
    seconds: float | None = attrs.field(default=None, validator=optional(ge(0.0)))
    outcome: Outcome = attrs.field(
        default="completed", validator=in_(("completed", "failed", "expired"))
    )
    shuffle: bool = True


@attrs.define
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: Mapping[str, str] | None
    pace: BatchPace
    created: float
    created_at: int
    lines: list[dict[str, Any]]
    status: str = "validating"
    polls: int = 0
    answered: int = 0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = attrs.field(factory=dict)
    usage: dict[str, int] | None = None

    def _counts(self) -> dict[str, int]:
        total = len(self.lines)
        if self.status != "in_progress":
            return {"total": total, "completed": self.completed, "failed": self.failed}
        done = total * self.polls // (self.pace.polls + 1)  # progress, for the display
        return {"total": total, "completed": done, "failed": 0}

    def to_json(self) -> dict[str, Any]:
        def at(name: str) -> int | None:
            return self.times.get(name)

        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": at("in_progress"), "expires_at": self.created_at + 86400,
            "finalizing_at": at("finalizing"), "completed_at": at("completed"),
            "failed_at": at("failed"), "expired_at": at("expired"),
            "cancelling_at": at("cancelling"), "cancelled_at": at("cancelled"),
            "request_counts": self._counts(),
            "metadata": None if self.metadata is None else dict(self.metadata),
            "usage": self.usage,
        }


class BatchAPI:
    """The files and batches an emulator holds, and how its batches move (see the module doc).

    Reached as ``Emulator.batches``; set :attr:`pace` before a batch is created
    to choose how it goes. ``render`` answers one line; ``clock`` is the
    emulator's. Its files are a :class:`FilesAPI` (:mod:`._files`).
    """

    def __init__(self, render: Render, clock: Callable[[], float]) -> None:
        self.pace = BatchPace()
        self.batches: dict[str, _Batch] = {}
        self._files = FilesAPI()
        self._render = render
        self._clock = clock
        self._random = random.Random(7)

    @property
    def files(self) -> dict[str, StoredFile]:
        """The files held, by id."""
        return self._files.files

    def reset(self) -> None:
        """Forget every file and batch (the pace stays)."""
        self.files.clear()
        self.batches.clear()

    def status_of(self, batch_id: str) -> str:
        """A batch's status, without counting as a poll.

        Raises:
            KeyError: no such batch.
        """
        return self.batches[batch_id].status

    async def handle(self, request: web.Request) -> Answer:
        """Answer one request under ``/v1/files`` or ``/v1/batches``.

        Raises:
            Refusal: an error in the API's shape (400, 404, 409).
        """
        parts = request.path.strip("/").split("/")[1:]  # after "v1"
        method = request.method
        if parts[0] == "files":
            return await self._files.handle(request, parts)
        if parts[0] == "batches":
            if len(parts) == 1 and method == "POST":
                return ok(self._create(await _json(request)).to_json())
            if len(parts) == 1 and method == "GET":
                return ok(self._list(request.query))
            if len(parts) >= 2:
                batch = self.batches.get(parts[1])
                if batch is None:
                    refuse(404, f"No batch found with id '{parts[1]}'.", param="batch_id")
                if len(parts) == 2 and method == "GET":
                    self._poll(batch)
                    return ok(batch.to_json())
                if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
                    self._cancel(batch)
                    return ok(batch.to_json())
        refuse(404, f"Invalid URL ({method} {request.path})")

    def add_file(self, data: bytes, filename: str, purpose: str) -> str:
        """Keep a file as ``POST /v1/files`` does; returns its id (``file-...``)."""
        return self._files.add_file(data, filename, purpose)

    def file_data(self, file_id: str) -> bytes | None:
        """The bytes of an uploaded file, or None when there is no such file."""
        return self._files.file_data(file_id)

    def _create(self, body: Mapping[str, Any]) -> _Batch:
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                refuse(400, f"Missing required parameter: '{name}'.", param=name)
        endpoint = body["endpoint"]
        if endpoint not in _ENDPOINTS:
            refuse(400, f"Invalid endpoint {endpoint!r}: the emulator batches "
                   f"{' and '.join(_ENDPOINTS)}.", param="endpoint")
        if body["completion_window"] != "24h":
            refuse(400, "Invalid completion_window: only '24h' is supported.",
                   param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, Mapping) or len(metadata) > 16
            or not all(isinstance(v, str) and len(v) <= 512 and len(k) <= 64
                       for k, v in metadata.items())
        ):
            refuse(400, "metadata: at most 16 string pairs, keys <= 64 and values <= 512 "
                   "characters.", param="metadata")
        file = self.files.get(body["input_file_id"])
        if file is None:
            refuse(400, f"No such File object: {body['input_file_id']}",
                   param="input_file_id")
        if file.purpose != "batch":
            refuse(400, "The input file must be uploaded with purpose 'batch'.",
                   param="input_file_id")
        lines, errors = _parse_input(file.data, endpoint)
        batch = _Batch(
            new_id("batch_"), endpoint, file.id, "24h", metadata, self.pace,
            self._clock(), int(time.time()), lines,
        )
        if errors or self.pace.outcome == "failed":
            batch.errors = errors or [
                {"code": "invalid_request", "message": "The batch failed to validate.",
                 "param": None, "line": None},
            ]
        self.batches[batch.id] = batch
        return batch

    def _list(self, query: Mapping[str, str]) -> dict[str, Any]:
        ordered = sorted(self.batches.values(), key=lambda b: b.created, reverse=True)
        after = query.get("after")
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        try:
            limit = max(1, min(100, int(query.get("limit", "20"))))
        except ValueError:
            refuse(400, "limit must be an integer.", param="limit")
        page = ordered[:limit]
        return {
            "object": "list", "data": [b.to_json() for b in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(ordered) > limit,
        }

    def _poll(self, batch: _Batch) -> None:
        if batch.status in _TERMINAL:
            return
        now = int(time.time())
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", answered=batch.answered)
            return
        if batch.errors is not None:
            batch.status = "failed"
            batch.times["failed"] = now
            return
        batch.polls += 1
        pace = batch.pace
        due = batch.polls > pace.polls or (
            pace.seconds is not None and self._clock() - batch.created >= pace.seconds
        )
        if not due:
            if batch.status == "validating":
                batch.status = "in_progress"
                batch.times["in_progress"] = now
            return
        batch.times.setdefault("in_progress", now)
        if pace.outcome == "expired":
            self._finish(batch, "expired", answered=len(batch.lines) // 2)
        else:
            self._finish(batch, "completed", answered=len(batch.lines))

    def _cancel(self, batch: _Batch) -> None:
        if batch.status in ("cancelling", "cancelled"):
            return
        if batch.status in _TERMINAL:
            refuse(409, f"Cannot cancel a batch with status '{batch.status}'.")
        # What was in progress is half done: those lines keep their answers.
        batch.answered = len(batch.lines) // 2 if batch.status == "in_progress" else 0
        batch.status = "cancelling"
        batch.times["cancelling"] = int(time.time())

    def _finish(self, batch: _Batch, status: str, *, answered: int) -> None:
        output: list[bytes] = []
        errors: list[bytes] = []
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for index, line in enumerate(batch.lines):
            custom_id = line["custom_id"]
            if index >= answered:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                message = (
                    "This request could not be executed before the completion window expired."
                    if status == "expired" else "This request was cancelled."
                )
                errors.append(_line(custom_id, None, {"code": code, "message": message}))
                batch.failed += 1
                continue
            code_status, body = self._render(batch.endpoint, line["body"])
            decoded = json.loads(body)
            response = {"status_code": code_status, "request_id": new_id("req_"),
                        "body": decoded}
            if code_status == 200:
                output.append(_line(custom_id, response, None))
                batch.completed += 1
                for key in usage:
                    usage[key] += int((decoded.get("usage") or {}).get(key, 0))
            else:
                errors.append(_line(custom_id, response, None))
                batch.failed += 1
        if batch.pace.shuffle:
            self._random.shuffle(output)
            self._random.shuffle(errors)
        if output:
            batch.output_file_id = self._store(f"{batch.id}_output.jsonl", output)
        if errors:
            batch.error_file_id = self._store(f"{batch.id}_error.jsonl", errors)
        if usage["total_tokens"]:
            batch.usage = usage
        now = int(time.time())
        if status == "completed":
            batch.times["finalizing"] = now
        batch.status = status
        batch.times[status] = now

    def _store(self, name: str, lines: list[bytes]) -> str:
        return self._files.add_file(b"".join(lines), name, "batch_output")


def _line(custom_id: str, response: Mapping[str, Any] | None,
          error: Mapping[str, Any] | None) -> bytes:
    body = {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response,
            "error": error}
    return json.dumps(body).encode() + b"\n"


async def _json(request: web.Request) -> Mapping[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        refuse(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        refuse(400, "We could not parse the JSON body of your request.")
    return body


def _parse_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of a batch input file, and the validation errors (``errors.data``) found."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(number: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict):
            error(number, "invalid_json_line", "This line is not a JSON object.")
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, "missing_required_parameter", "Missing 'custom_id'.", "custom_id")
            continue
        if custom_id in seen:
            error(number, "duplicate_custom_id",
                  f"The custom_id {custom_id!r} is used more than once.", "custom_id")
            continue
        seen.add(custom_id)
        if line.get("method") != "POST":
            error(number, "invalid_method", "Only POST is supported.", "method")
            continue
        if line.get("url") != endpoint:
            error(number, "mismatched_endpoint",
                  f"The url {line.get('url')!r} does not match the batch's endpoint "
                  f"{endpoint!r}.", "url")
            continue
        if not isinstance(line.get("body"), dict):
            error(number, "missing_required_parameter", "Missing 'body'.", "body")
            continue
        lines.append(line)
    if len(lines) > _MAX_LINES:
        error(0, "too_many_requests", f"A batch holds at most {_MAX_LINES} requests.")
    if not lines and not errors:
        error(0, "empty_file", "The input file has no requests.")
    return lines, errors
