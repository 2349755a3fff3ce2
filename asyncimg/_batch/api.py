"""OpenAI's Batch API for images: many requests handed over as one job, run within 24 h.

::

    job = await submit_batch(client, [batch_api_line("item-1", "generate", params.to_json()), ...])
    batch = await job.wait(poll_interval=60)          # completed, failed, expired, cancelled
    async for result in job.results():                # any order: match on custom_id
        result.custom_id, result.response, result.error

:func:`submit_batch` uploads the JSONL (``POST /files``, ``purpose=batch``) and creates the
batch (``POST /batches``); :class:`BatchAPIJob` polls it (``GET /batches/{id}``), cancels
it, and reads the output and error files (``GET /files/{id}/content``) as
:class:`BatchAPIResult` values. These requests take no images from the client's rate
limiter: batches run under limits of their own.

Creating a batch is never retried blind: when the create request fails without an
answer, the batches of the organization are listed and one made from the same input
file is adopted, so one input never becomes two batches. Building lines, splitting
them into files and reading result lines are pure functions.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._clock import Clock, MonotonicClock
from .._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    BatchRequestError,
    ValidationError,
    error_from_response,
)
from .._json import int_field
from .._json import str_field as _str
from .._models import ImagesResponse, Usage

if TYPE_CHECKING:
    from .._client import AsyncImagesClient
    from .._transport import RawResponse

__all__ = [
    "ENDPOINT_PATHS",
    "MAX_BYTES",
    "MAX_LINES",
    "TERMINAL",
    "BatchAPIJob",
    "BatchAPIResult",
    "BatchCounts",
    "BatchLineError",
    "batch_api_line",
    "create",
    "file_lines",
    "find_batch",
    "retrieve",
    "split_batch_lines",
    "submit_batch",
    "upload",
]

ENDPOINT_PATHS: Final[Mapping[str, str]] = {
    "generate": "/v1/images/generations",
    "edit": "/v1/images/edits",
}
"""The Batch API's url for each images endpoint it accepts."""
MAX_LINES: Final = 50_000
"""Requests in one batch at most."""
MAX_BYTES: Final = 200 * 1024 * 1024
"""Bytes of one batch input file at most."""
TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
"""The statuses a batch does not leave."""


# -- pure: lines in, lines out ------------------------------------------------------------


def batch_api_line(custom_id: str, endpoint: str, body: Mapping[str, Any]) -> bytes:
    """One line of a batch input file (with its newline).

    Raises:
        ValidationError: ``endpoint`` is not one the Batch API takes for images, the
            custom id is empty, or the body cannot be written as JSON.
    """
    url = ENDPOINT_PATHS.get(endpoint)
    if url is None:
        raise ValidationError(
            "endpoint", f"the Batch API takes {' and '.join(ENDPOINT_PATHS)}, not {endpoint!r}"
        )
    if not custom_id:
        raise ValidationError("custom_id", "a batch line needs a non-empty custom_id")
    line = {"custom_id": custom_id, "method": "POST", "url": url, "body": dict(body)}
    try:
        return json.dumps(line, ensure_ascii=False, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise ValidationError("extra_body", f"the request cannot be sent as JSON: {exc}") from None


def split_batch_lines(
    lines: Iterable[bytes], *, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES
) -> list[list[bytes]]:
    """Group lines into input files of at most ``max_lines`` lines and ``max_bytes`` bytes.

    Raises:
        ValidationError: one line alone is larger than ``max_bytes``.
    """
    files: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) > max_bytes:
            raise ValidationError(
                "batch", f"one request is {len(line)} bytes, over the {max_bytes}-byte file limit"
            )
        if current and (len(current) >= max_lines or size + len(line) > max_bytes):
            files.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        files.append(current)
    return files


def _int(obj: Mapping[str, Any], key: str) -> int:
    return int_field(obj, key) or 0


@attrs.frozen
class BatchCounts:
    """A batch's ``request_counts``."""

    total: int = 0
    completed: int = 0
    failed: int = 0

    @classmethod
    def from_json(cls, obj: object) -> BatchCounts:
        """Build from the decoded ``request_counts`` (anything else gives zeros)."""
        if not isinstance(obj, Mapping):
            return cls()
        return cls(_int(obj, "total"), _int(obj, "completed"), _int(obj, "failed"))


@attrs.frozen
class BatchLineError:
    """One entry of a failed batch's ``errors``: why its input was refused."""

    code: str | None
    message: str | None
    param: str | None = None
    line: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BatchLineError:
        """Build from one decoded ``errors.data`` entry."""
        line = obj.get("line")
        return cls(_str(obj, "code"), _str(obj, "message"), _str(obj, "param"),
                   line if isinstance(line, int) else None)


@attrs.frozen
class BatchAPIState:
    """A batch as the API describes it (``GET /batches/{id}``); ``extra`` keeps other fields."""

    id: str
    status: str
    endpoint: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    request_counts: BatchCounts = BatchCounts()
    errors: tuple[BatchLineError, ...] = ()
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    usage: Usage | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    note: str | None = None
    """What the caller adds to the state for a display (a poll retried, a line skipped)."""

    _KNOWN = frozenset({
        "id", "status", "endpoint", "input_file_id", "output_file_id", "error_file_id",
        "created_at", "request_counts", "errors", "metadata", "usage",
    })

    @property
    def done(self) -> bool:
        """True once the batch has ended (completed, failed, expired or cancelled)."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, obj: object) -> BatchAPIState:
        """Build from a decoded batch object.

        Raises:
            APIResponseValidationError: not a batch object (no string ``id`` or ``status``).
        """
        if not isinstance(obj, Mapping) or not isinstance(obj.get("id"), str) or not isinstance(
            obj.get("status"), str
        ):
            raise APIResponseValidationError("expected a batch object", status_code=200)
        errors = obj.get("errors")
        data = errors.get("data") if isinstance(errors, Mapping) else None
        metadata = obj.get("metadata")
        usage = obj.get("usage")
        return cls(
            id=obj["id"],
            status=obj["status"],
            endpoint=_str(obj, "endpoint"),
            input_file_id=_str(obj, "input_file_id"),
            output_file_id=_str(obj, "output_file_id"),
            error_file_id=_str(obj, "error_file_id"),
            created_at=_int(obj, "created_at"),
            request_counts=BatchCounts.from_json(obj.get("request_counts")),
            errors=tuple(
                BatchLineError.from_json(e) for e in (data or ()) if isinstance(e, Mapping)
            ),
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, Mapping) else {},
            usage=Usage.from_json(usage) if isinstance(usage, dict) else None,
            extra={k: v for k, v in obj.items() if k not in cls._KNOWN},
        )


@attrs.frozen
class BatchAPIResult:
    """The outcome of one line: exactly one of ``response`` and ``error`` is set."""

    custom_id: str
    response: ImagesResponse | None
    error: APIError | None

    @property
    def ok(self) -> bool:
        """True when the line was answered with images."""
        return self.response is not None

    @classmethod
    def from_line(cls, line: bytes | str) -> BatchAPIResult:
        """Read one line of an output or error file.

        A 200 with an images body is a response; another status is the error its
        body describes (the class its status maps to, as a direct call raises);
        a line with ``error`` and no response (expired, cancelled) is a
        :class:`BatchRequestError` with its code. A malformed line whose
        ``custom_id`` can still be read (a cut or garbled line) is that item's
        :class:`APIResponseValidationError`.

        Raises:
            APIResponseValidationError: the line is not a batch result and names no
                custom id (its item cannot be told).
        """
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            custom_id = _readable_custom_id(line)
            if custom_id is None:
                raise APIResponseValidationError(
                    "a batch result line is not JSON", status_code=200
                ) from None
            return cls(custom_id, None, APIResponseValidationError(
                "the batch result line of this item is not JSON", status_code=200))
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            raise APIResponseValidationError(
                "a batch result line has no custom_id", status_code=200
            )
        custom_id = obj["custom_id"]
        response = obj.get("response")
        if isinstance(response, Mapping):
            status = response.get("status_code")
            request_id = _str(response, "request_id")
            body = response.get("body")
            if status == 200:
                try:
                    images = ImagesResponse.from_json(body, request_id=request_id)
                except APIResponseValidationError as exc:
                    return cls(custom_id, None, exc)
                return cls(custom_id, images, None)
            if isinstance(status, int) and not isinstance(status, bool):
                raw = json.dumps(body).encode() if body is not None else b""
                return cls(custom_id, None, error_from_response(status, raw,
                                                                request_id=request_id))
        error = obj.get("error")
        if isinstance(error, Mapping):
            return cls(custom_id, None, BatchRequestError(
                _str(error, "message") or "the request was not run", code=_str(error, "code"),
            ))
        return cls(custom_id, None, APIResponseValidationError(
            f"batch result {custom_id!r} has neither a response nor an error", status_code=200
        ))


_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _readable_custom_id(line: bytes | str) -> str | None:
    """The ``custom_id`` of a line that is not JSON, when its field is intact."""
    raw = line.encode(errors="replace") if isinstance(line, str) else line
    found = _CUSTOM_ID.search(raw)
    if found is None:
        return None
    try:
        value = json.loads(b'"' + found.group(1) + b'"')
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and value else None


def transient(exc: APIError) -> bool:
    """True for an error a later poll may not meet: no answer, 408, 409, 429 or a 5xx."""
    if isinstance(exc, APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and (
        exc.status_code in (408, 409, 429) or exc.status_code >= 500
    )


def poll_delay(failures: int, *, initial: float, poll_interval: float) -> float:
    """Seconds before polling again after ``failures`` transient errors in a row.

    Doubles from ``initial`` and never exceeds the poll interval (nor goes below
    ``initial``): a flaky status endpoint is asked no more often than a healthy one.
    """
    return float(min(initial * 2.0 ** max(failures - 1, 0), max(poll_interval, initial)))


def window_seconds(completion_window: str) -> float:
    """``"24h"`` as seconds (the Batch API's completion windows are whole hours).

    Raises:
        ValidationError: not a number of hours such as ``24h``.
    """
    hours = completion_window[:-1] if completion_window.endswith("h") else ""
    if not hours.isdigit() or int(hours) <= 0:
        raise ValidationError(
            "completion_window", f"expected hours such as '24h', not {completion_window!r}")
    return int(hours) * 3600.0


# -- I/O: the requests -------------------------------------------------------------------


def _decode(raw: RawResponse) -> Any:
    try:
        return json.loads(raw.body)
    except (ValueError, UnicodeDecodeError):
        raise APIResponseValidationError(
            f"the {raw.status} response is not JSON", status_code=raw.status,
            request_id=raw.request_id,
        ) from None


async def upload(client: AsyncImagesClient, lines: Iterable[bytes], filename: str) -> str:
    """Upload a batch input file (``POST /files``, ``purpose=batch``); returns its id.

    Raises:
        APIStatusError, APIConnectionError: the upload failed.
        APIResponseValidationError: the answer has no file id.
    """
    data = b"".join(lines)
    raw = await client.request(
        "POST", "/files", data={"purpose": "batch"},
        files={"file": (filename, data, "application/jsonl")},
    )
    obj = _decode(raw)
    file_id = obj.get("id") if isinstance(obj, dict) else None
    if not isinstance(file_id, str):
        raise APIResponseValidationError("the upload's answer has no file id", status_code=200)
    return file_id


async def retrieve(
    client: AsyncImagesClient, batch_id: str, *, max_retries: int | None = None
) -> BatchAPIState:
    """``GET /batches/{id}`` (``max_retries``: the client's unless given).

    Raises:
        APIStatusError, APIConnectionError: the request failed (404: no such batch).
    """
    raw = await client.request("GET", f"/batches/{batch_id}", max_retries=max_retries)
    return BatchAPIState.from_json(_decode(raw))


async def find_batch(client: AsyncImagesClient, input_file_id: str) -> BatchAPIState | None:
    """The newest batch made from ``input_file_id``, looking through ``GET /batches`` pages.

    Raises:
        APIStatusError, APIConnectionError: listing failed.
    """
    after: str | None = None
    while True:
        query = {"limit": "100", **({"after": after} if after else {})}
        page = _decode(await client.request("GET", "/batches", params=query))
        data = page.get("data") if isinstance(page, dict) else None
        for obj in data if isinstance(data, list) else ():
            if isinstance(obj, dict) and obj.get("input_file_id") == input_file_id:
                return BatchAPIState.from_json(obj)
        if not (isinstance(page, dict) and page.get("has_more") and data):
            return None
        last = data[-1]
        after = last.get("id") if isinstance(last, dict) else None
        if not isinstance(after, str):
            return None


async def create(
    client: AsyncImagesClient,
    input_file_id: str,
    endpoint: str,
    *,
    completion_window: str = "24h",
    metadata: Mapping[str, str] | None = None,
) -> BatchAPIState:
    """Create a batch from an uploaded file (``POST /batches``), at most once.

    The create request itself is sent once; when it gets no answer (a dropped
    connection, a timeout, a 5xx) the batch may exist all the same, so it is
    looked for by its input file and adopted before another create is tried
    (up to the client's ``max_retries``).

    Raises:
        ValidationError: ``endpoint`` is not an images endpoint of the Batch API.
        APIStatusError, APIConnectionError: the batch could not be created.
    """
    url = ENDPOINT_PATHS.get(endpoint)
    if url is None:
        raise ValidationError("endpoint", f"the Batch API takes {' and '.join(ENDPOINT_PATHS)}")
    body: dict[str, Any] = {
        "input_file_id": input_file_id, "endpoint": url, "completion_window": completion_window,
    }
    if metadata:
        body["metadata"] = dict(metadata)
    attempts = client.retry_policy.max_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            raw = await client.request("POST", "/batches", json=body, max_retries=0)
        except APIError as exc:
            unanswered = isinstance(exc, APIConnectionError) or (
                isinstance(exc, APIStatusError) and exc.status_code >= 500
            )
            if not unanswered or attempt == attempts:
                raise
            found = await find_batch(client, input_file_id)
            if found is not None:
                return found
            await asyncio.sleep(client.retry_policy.initial * 2 ** (attempt - 1))
            continue
        return BatchAPIState.from_json(_decode(raw))
    raise AssertionError("unreachable")  # pragma: no cover


async def file_lines(client: AsyncImagesClient, file_id: str) -> list[bytes]:
    """The lines of a file's content (``GET /files/{id}/content``), empty lines left out.

    Raises:
        APIStatusError, APIConnectionError: the download failed.
    """
    raw = await client.request("GET", f"/files/{file_id}/content")
    return [line for line in raw.body.splitlines() if line.strip()]


class BatchAPIJob:
    """One batch of the Batch API: poll it, cancel it, read its results.

    Args:
        client: the client whose base URL, key and retries the requests use.
        batch_id: the batch's id (as recorded by whoever created it).
    """

    def __init__(self, client: AsyncImagesClient, batch_id: str) -> None:
        self.client = client
        self.id = batch_id
        self.batch: BatchAPIState | None = None
        """What the last poll said (None before the first)."""

    def __repr__(self) -> str:
        status = self.batch.status if self.batch else "unknown"
        return f"<BatchAPIJob {self.id} {status}>"

    async def retrieve(self) -> BatchAPIState:
        """Poll once (``GET /batches/{id}``).

        Raises:
            APIStatusError, APIConnectionError: the request failed.
        """
        self.batch = await retrieve(self.client, self.id)
        return self.batch

    async def poll(
        self,
        *,
        poll_interval: float = 60.0,
        give_up_after: float = 24 * 3600.0,
        on_retry: Callable[[APIError, float, float], None] | None = None,
        clock: Clock | None = None,
    ) -> BatchAPIState:
        """Poll once, riding out transient errors (see :func:`transient`).

        Polling is not billed, so a 5xx, a 429 or a lost connection is polled
        again after :func:`poll_delay` (up to ``poll_interval``), for as long as
        the errors have lasted less than ``give_up_after`` seconds (by then the
        batch has ended anyway: a rerun collects it). ``on_retry(error, delay,
        give_up_at)`` is told of each (``give_up_at`` on ``clock``'s time).

        Raises:
            APIStatusError: a refusal that is not transient (a 404: no such batch,
                a 401), or transient errors for ``give_up_after`` seconds in a row.
            APIConnectionError: no answer for ``give_up_after`` seconds in a row.
        """
        clock = clock or MonotonicClock()
        first: float | None = None
        failures = 0
        while True:
            try:
                self.batch = await retrieve(self.client, self.id, max_retries=0)
            except APIError as exc:
                now = clock.now()
                first = now if first is None else first
                if not transient(exc) or now - first >= give_up_after:
                    raise
                failures += 1
                delay = poll_delay(failures, initial=self.client.retry_policy.initial,
                                   poll_interval=poll_interval)
                if on_retry is not None:
                    on_retry(exc, delay, first + give_up_after)
                await clock.sleep_until(now + delay)
                continue
            return self.batch

    async def wait(
        self,
        *,
        poll_interval: float = 60.0,
        on_poll: Callable[[BatchAPIState], None] | None = None,
        give_up_after: float = 24 * 3600.0,
    ) -> BatchAPIState:
        """Poll every ``poll_interval`` seconds until the batch has ended; returns it.

        ``on_poll`` is called with every answer (a progress display). Transient
        errors are polled through as :meth:`poll` does, for ``give_up_after``
        seconds in a row at most.

        Raises:
            ValidationError: ``poll_interval`` is negative.
            APIStatusError, APIConnectionError: polling failed (see :meth:`poll`).
        """
        if not poll_interval >= 0:
            raise ValidationError("poll_interval", "poll_interval must be >= 0 seconds")
        while True:
            batch = await self.poll(poll_interval=poll_interval, give_up_after=give_up_after)
            if on_poll is not None:
                on_poll(batch)
            if batch.done:
                return batch
            await asyncio.sleep(poll_interval)

    async def cancel(self) -> BatchAPIState:
        """Ask for the batch to be cancelled (``POST /batches/{id}/cancel``).

        Raises:
            APIStatusError: the batch has already ended (409), or another refusal.
            APIConnectionError: no answer.
        """
        raw = await self.client.request("POST", f"/batches/{self.id}/cancel")
        self.batch = BatchAPIState.from_json(_decode(raw))
        return self.batch

    async def results(
        self, *, on_unreadable: Callable[[str], None] | None = None
    ) -> AsyncIterator[BatchAPIResult]:
        """Every line of the output file, then of the error file, as :class:`BatchAPIResult`.

        Polls once first if the batch was never polled. A line that names no
        custom id cannot fail any item: it is skipped, and ``on_unreadable`` is
        told why (with the file and line number) so that it can be reported; one
        bad line never hides the lines after it.

        Raises:
            APIStatusError, APIConnectionError: a file could not be downloaded.
        """
        batch = self.batch or await self.retrieve()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is None:
                continue
            for number, line in enumerate(await file_lines(self.client, file_id), 1):
                try:
                    result = BatchAPIResult.from_line(line)
                except APIResponseValidationError as exc:
                    if on_unreadable is not None:
                        on_unreadable(f"{file_id} line {number}: {exc.message}, skipped")
                    continue
                yield result


async def submit_batch(
    client: AsyncImagesClient,
    lines: Iterable[bytes],
    *,
    endpoint: str = "generate",
    completion_window: str = "24h",
    metadata: Mapping[str, str] | None = None,
    filename: str = "asyncimg-batch.jsonl",
) -> BatchAPIJob:
    """Upload ``lines`` (see :func:`batch_api_line`) as one input file and create its batch.

    Raises:
        ValidationError: no lines, too many, or too large for one batch (use
            :func:`split_batch_lines`), or ``endpoint`` is not an images endpoint.
        APIStatusError, APIConnectionError: the upload or the create failed.
    """
    lines = list(lines)
    if not lines:
        raise ValidationError("lines", "a batch needs at least one request")
    if len(split_batch_lines(lines)) > 1:
        raise ValidationError(
            "lines", f"{len(lines)} requests do not fit one batch "
            f"({MAX_LINES} lines, {MAX_BYTES} bytes): split them with split_batch_lines()"
        )
    file_id = await upload(client, lines, filename)
    batch = await create(client, file_id, endpoint, completion_window=completion_window,
                         metadata=metadata)
    job = BatchAPIJob(client, batch.id)
    job.batch = batch
    return job
