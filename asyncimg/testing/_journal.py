"""The journal: every request the emulator received, and what it answered.

``Emulator.journal`` is a :class:`Journal` of :class:`JournalEntry` values, in
the order their answers finished, the latest ``journal_size`` kept;
``Emulator.requests()`` filters it. An entry is written for every request,
answered, refused, faulted or dropped; its key headers are masked
(:func:`._keys.mask_key`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import attrs
from aiohttp import web

from ._faults import path_matches
from ._keys import redacted

__all__ = ["Journal", "JournalEntry", "UploadedFile", "journal_entry"]


@attrs.frozen
class UploadedFile:
    """A file part of a multipart request, as the emulator received it."""

    field: str
    filename: str | None
    mime: str
    """The MIME type sniffed from the bytes, else the part's own Content-Type."""
    size: int


@attrs.frozen
class JournalEntry:
    """One request the emulator received, and what it answered.

    ``headers`` has ``Authorization`` and ``api-key`` masked (:func:`mask_key`);
    ``json`` is the decoded body of a generation or a JSON edit (None otherwise
    or when it was not JSON);
    ``fields`` are a form's text fields; ``status`` is None when no status was
    sent (a dropped connection, or the client went away first); ``fault`` names
    the scripted fault applied, if any; ``time`` is the emulator's clock at
    arrival.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any
    fields: Mapping[str, str]
    files: tuple[UploadedFile, ...]
    status: int | None
    time: float
    request_id: str
    fault: str | None = None
    images: int = 0
    """Images the request asked for (0 when it was not a valid images request)."""
    events: int | None = None
    """Server-sent events written (None: not a streamed answer)."""


class Journal(Sequence[JournalEntry]):
    """The requests the emulator received, in the order their answers finished.

    With ``maxlen`` it keeps only the latest ``maxlen`` (a long-running emulator
    stays small); None keeps every entry.
    """

    def __init__(self, maxlen: int | None = None) -> None:
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=maxlen)

    def append(self, entry: JournalEntry) -> None:
        """Record one entry (the emulator does this)."""
        self._entries.append(entry)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    @overload
    def __getitem__(self, index: int) -> JournalEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[JournalEntry]: ...

    def __getitem__(self, index: int | slice) -> JournalEntry | list[JournalEntry]:
        if isinstance(index, slice):
            return list(self._entries)[index]
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(list(self._entries))

    def __repr__(self) -> str:
        return f"<Journal of {len(self._entries)} requests>"

    def filter(
        self,
        path: str | None = None,
        *,
        method: str | None = None,
        status: int | None = None,
    ) -> list[JournalEntry]:
        """The entries for ``path`` (an endpoint name, a path, or a prefix ending in ``/``).

        With ``path`` None every entry matches; ``method`` and ``status`` narrow it.
        """
        return [
            e
            for e in self._entries
            if (path is None or path_matches(path, e.path))
            and (method is None or e.method == method.upper())
            and (status is None or e.status == status)
        ]


def journal_entry(
    request: web.Request, arrived: float, request_id: str, record: Mapping[str, Any]
) -> JournalEntry:
    """The entry of ``request``, its key headers masked; ``record`` holds what was learnt.

    ``record`` has the other fields of :class:`JournalEntry` (``json``,
    ``fields``, ``files``, ``status``, ``fault``, ``images``, ``events``), as
    handling the request filled them in.
    """
    return JournalEntry(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers=redacted(request.headers),
        time=arrived,
        request_id=request_id,
        **record,
    )
