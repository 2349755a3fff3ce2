"""The batch's input: text decoded a line at a time, read as items with stable ids.

* :func:`open_text` / :class:`TextLines`: a binary stream decoded a line at a
  time; a line that does not decode is an :class:`InputError` naming it (and the
  ``--encoding`` option), never a ``UnicodeDecodeError`` traceback;
* :func:`read_entries`: the lines of a ``txt``, ``jsonl`` or ``csv`` input as
  :class:`Entry` values, each with a stable id: a hash of its prompt and its
  effective parameters (plus ``-2``, ``-3``... for repeats of the same item), so
  editing or inserting other lines does not change it;
* :class:`Shard`: which items one of N processes runs (``--shard K/N``), chosen by a
  hash of the item id, so the same item falls in the same shard on every machine
  and every run, whatever line it is on.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

import attrs

from .._keywords import GENERATE_KEYWORDS, OPTIONS

__all__ = [
    "ID_FIELD",
    "INPUT_FORMATS",
    "Entry",
    "InputError",
    "Shard",
    "TextLines",
    "detect_format",
    "open_text",
    "read_entries",
    "shard_from_env",
]

INPUT_FORMATS: Final = ("txt", "jsonl", "csv")
ID_FIELD: Final = "id"
"""A CSV column (or JSONL key) that names its item instead of the hash."""
# What a CSV column may be: a parameter of generate() (not streamed), the prompt or the id.
_COLUMNS = (GENERATE_KEYWORDS - OPTIONS - {"partial_images"}) | {
    "timeout", "max_retries", "prompt", ID_FIELD,
}
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# Parameters that do not change the images, so not part of an item's id.
_NOT_IN_ID = frozenset({"timeout", "max_retries"})
_INT_PARAMS = frozenset({"n", "output_compression", "max_retries"})
_FLOAT_PARAMS = frozenset({"timeout"})


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


# -- shards -----------------------------------------------------------------------------


@attrs.frozen
class Shard:
    """Shard ``index`` of ``count`` (1-based: ``2/5`` is the second of five).

    An item belongs to the shard its id hashes to (SHA-256 of the id), so the N
    shards of an input split it into N disjoint parts that cover it whole.
    """

    index: int
    count: int

    @property
    def name(self) -> str:
        """``2of5``: what the shard's files in DIR are named with."""
        return f"{self.index}of{self.count}"

    def holds(self, item_id: str) -> bool:
        """True when the item with this id is in this shard."""
        digest = hashlib.sha256(item_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` (1 <= K <= N) as a shard.

        Raises:
            ValueError: ``text`` is not ``K/N`` with whole numbers 1 <= K <= N.
        """
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
        if not match:
            raise ValueError(f"{text!r} is not K/N (e.g. 2/5: the second of five shards)")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise ValueError(f"{text!r}: K must be between 1 and N (K is 1-based)")
        return cls(index, count)


def shard_from_env(environ: Mapping[str, str], count: int | None) -> Shard:
    """The shard of this process in a job array, from its environment.

    Kubernetes Indexed Jobs set ``JOB_COMPLETION_INDEX`` (0-based; ``count`` is the
    Job's ``completions`` and must be given); Slurm job arrays set
    ``SLURM_ARRAY_TASK_ID``, counted from ``SLURM_ARRAY_TASK_MIN`` (so ``--array=0-4``
    and ``--array=1-5`` both work), with ``SLURM_ARRAY_TASK_COUNT`` as the default
    ``count``. Task 0 (the array's first) is shard ``1/N``.

    Raises:
        ValueError: neither variable is set, one is not a whole number, no count is
            known, or the index falls outside the count.
    """
    if "JOB_COMPLETION_INDEX" in environ:
        source = "JOB_COMPLETION_INDEX"
        zero_based = _whole(environ, source)
    elif "SLURM_ARRAY_TASK_ID" in environ:
        source = "SLURM_ARRAY_TASK_ID"
        zero_based = _whole(environ, source) - _whole(environ, "SLURM_ARRAY_TASK_MIN")
        if count is None and environ.get("SLURM_ARRAY_TASK_COUNT"):
            count = _whole(environ, "SLURM_ARRAY_TASK_COUNT")
    else:
        raise ValueError(
            "neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor "
            "SLURM_ARRAY_TASK_ID (Slurm job array) is set"
        )
    if count is None or count < 1:
        raise ValueError(f"{source} is set but the number of shards is not: give it (N)")
    if not 0 <= zero_based < count:
        raise ValueError(f"{source} gives task {zero_based} (0-based), outside 0..{count - 1}")
    return Shard(zero_based + 1, count)


def _whole(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name) or "0"
    if not value.strip().isdigit():
        raise ValueError(f"${name} is {value!r}, not a whole number")
    return int(value)


# -- items ------------------------------------------------------------------------------


@attrs.frozen
class Entry:
    """One item of the input: where it was, its prompt, its own parameters, its id.

    ``problem`` is set when the line cannot become a request (bad JSON, no prompt);
    such an entry becomes a failed item.
    """

    line: int
    prompt: str
    params: Mapping[str, Any]
    id: str
    problem: str | None = None


def _item_id(prompt: str, params: Mapping[str, Any], seen: dict[str, int]) -> str:
    key = {k: v for k, v in params.items() if k not in _NOT_IN_ID and v is not None}
    canonical = json.dumps(
        {"prompt": prompt, "params": key}, sort_keys=True, ensure_ascii=False, default=str
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    count = seen.get(digest, 0) + 1
    seen[digest] = count
    return digest if count == 1 else f"{digest}-{count}"


def _coerce(name: str, value: str) -> Any:
    if name in _INT_PARAMS:
        try:
            return int(value)
        except ValueError:
            return value  # generate() reports it, naming the parameter
    if name in _FLOAT_PARAMS:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _raw_records(stream: Iterable[str], fmt: str) -> Iterator[tuple[int, object, str | None]]:
    """``(line, record, problem)``: a record is a str prompt or a mapping."""
    if fmt == "txt":
        for number, text in enumerate(stream, 1):
            prompt = text.strip()
            if prompt and not prompt.startswith("#"):
                yield number, prompt, None
    elif fmt == "jsonl":
        for number, text in enumerate(stream, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, text.strip(), f"line {number} is not valid JSON: {exc.msg}"
                continue
            if isinstance(record, (str, dict)):
                yield number, record, None
            else:
                yield number, text.strip(), f"line {number} is not a JSON object or string"
    elif fmt == "csv":
        reader = csv.DictReader(stream)
        if reader.fieldnames is None:
            return
        fields = [f.strip() for f in reader.fieldnames]
        if "prompt" not in fields:
            raise InputError("the CSV file needs a header row with a 'prompt' column")
        unknown = [f for f in fields if f not in _COLUMNS]
        if unknown:
            raise InputError(
                f"the CSV file's column {unknown[0]!r} is not a parameter (columns: prompt, "
                f"{ID_FIELD} to name the item, and the parameters, e.g. size, quality, n)"
            )
        reader.fieldnames = fields
        for row in reader:
            values = {
                k: _coerce(k, v.strip())
                for k, v in row.items()
                if k is not None and isinstance(v, str) and v.strip() != ""
            }
            if not values:
                continue
            yield reader.line_num, values, None
    else:
        raise InputError(f"unknown input format {fmt!r} (one of {', '.join(INPUT_FORMATS)})")


def _own_id(line: int, value: object, named: dict[str, int]) -> str:
    """An ``id`` the input gives: a safe file name stem, not given twice.

    Raises:
        InputError: it is not one (its images are named after it), or a repeat.
    """
    if not isinstance(value, str) or not _ID.match(value):
        raise InputError(
            f"line {line}: the {ID_FIELD} {value!r} is not 1 to 64 letters, digits, '_', "
            "'-' or '.' (not first): it names the item's image files"
        )
    if value in named:
        raise InputError(
            f"line {line}: the {ID_FIELD} {value!r} is the id of line {named[value]} too"
        )
    named[value] = line
    return value


def read_entries(
    stream: Iterable[str], fmt: str, params: Mapping[str, Any]
) -> Iterator[Entry]:
    """The entries of an input stream, lazily.

    ``fmt`` is ``txt`` (a prompt a line; blank lines and lines starting with ``#``
    are skipped), ``jsonl`` (a JSON object a line: ``prompt`` plus parameters; or a
    JSON string) or ``csv`` (a header row with a ``prompt`` column; other non-empty
    columns are parameters). ``params`` are the batch's parameters: an entry's id
    covers them under its own. An ``id`` column or key names its item instead of
    the hash (and its files, ``{id}-{i}.png``): a rerun skips a done id even if
    its prompt changed.

    Raises:
        InputError: the whole input is unusable (a CSV file without a prompt column
            or with a column that is not a parameter, an ``id`` that is not a safe
            file name or given twice), or a line does not decode (from
            :func:`open_text`'s streams).
    """
    seen: dict[str, int] = {}
    named: dict[str, int] = {}
    for line, record, problem in _raw_records(stream, fmt):
        given: str | None = None
        if isinstance(record, str):
            prompt, own = record, {}
        else:
            assert isinstance(record, dict)
            raw = record.get("prompt")
            own = {str(k): v for k, v in record.items() if k not in ("prompt", ID_FIELD)}
            if record.get(ID_FIELD) is not None:
                given = _own_id(line, record[ID_FIELD], named)
            if isinstance(raw, str):
                prompt = raw
            else:
                prompt = "" if raw is None else json.dumps(raw)
                problem = problem or f"line {line} has no string 'prompt'"
        effective = {**params, **own}
        item_id = given or _item_id(prompt, effective, seen)
        yield Entry(line, prompt, own, item_id, problem)


def detect_format(path: str, given: str | None) -> str:
    """The input format: ``given``, else from the file's suffix (``txt`` for others and stdin)."""
    if given:
        return given
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix == "csv":
        return "csv"
    return "txt"
