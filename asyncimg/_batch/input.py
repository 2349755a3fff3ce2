"""The batch's input as text: a binary stream decoded a line at a time.

A line that does not decode is an :class:`InputError` naming it (and the
``--encoding`` option), never a ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["InputError", "TextLines", "open_text"]


class InputError(Exception):
    """The input file cannot be read at all (not one bad line: those are failed items)."""


class TextLines:
    """A binary stream read as text, a line at a time (a context manager, like a file).

    A byte order mark at the start is dropped. A line that does not decode is an
    :class:`InputError` naming the line, not a ``UnicodeDecodeError``.

    Raises:
        LookupError: ``encoding`` is not a codec.
    """

    def __init__(self, raw: IO[bytes], encoding: str, name: str, *, owned: bool = True) -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._raw = raw
        self._owned = owned
        self.encoding = encoding
        self.name = name

    def __iter__(self) -> Iterator[str]:
        for number, raw in enumerate(self._raw, 1):
            try:
                text = self._decoder.decode(raw)
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{self.name}: line {number} is not valid {self.encoding} "
                    f"(byte {raw[exc.start:exc.start + 1]!r} at column {exc.start + 1}); "
                    "give the file's encoding with --encoding, e.g. --encoding cp1252"
                ) from None
            yield text[1:] if number == 1 and text.startswith("\ufeff") else text

    def close(self) -> None:
        """Close the underlying stream, if it was opened for this (not stdin)."""
        if self._owned:
            self._raw.close()

    def __enter__(self) -> TextLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_text(path: str, encoding: str = "utf-8") -> Callable[[], TextLines]:
    """An opener for ``path`` (``-``: standard input) as :class:`TextLines`.

    Raises:
        LookupError: ``encoding`` is not a codec (at once, not when opening).
    """
    codecs.lookup(encoding)
    if path == "-":
        # A reader of its own on a copy of the descriptor, never closed: a read may
        # still be blocked in the reader's thread when the run stops, and sys.stdin's
        # own buffer must stay free for the interpreter's shutdown.
        return lambda: TextLines(
            open(os.dup(sys.stdin.fileno()), "rb"), encoding, "stdin", owned=False
        )
    return lambda: TextLines(open(path, "rb"), encoding, path)
