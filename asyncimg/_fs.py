"""Writing files we create: atomically, under names that cannot leave their directory.

A reader never sees a half-written image: bytes go to a temporary file in the
same directory (mode 0o666 less the umask, as ``open()`` would), are flushed to
disk, then renamed or hard-linked into place.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = ["inside", "open_new", "safe_stem", "write_atomic", "write_files", "write_new"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")
_DASHES = re.compile(r"-{2,}")


def safe_stem(stem: str) -> str:
    """A file name stem that cannot leave its directory: no separators, no leading dots."""
    cleaned = _DASHES.sub("-", _UNSAFE.sub("-", stem)).strip(".-")
    return cleaned[:120] or "image"


def inside(folder: Path, name: str) -> Path:
    """``folder/name``, checked to stay inside ``folder`` (symlinks resolved).

    ``name`` must be one plain file name (no separator, not ``.`` or ``..``,
    no NUL), and the resolved parent of the path must be the resolved folder.

    Raises:
        OSError: (EPERM) the path would leave ``folder``.
    """
    path = folder / name
    if not _plain(name) or path.parent.resolve() != folder.resolve():
        raise OSError(errno.EPERM, f"refusing to write {name!r}: it would leave {folder}")
    return path


def _plain(name: str) -> bool:
    """One plain file name: no separator, not ``.`` or ``..``, no NUL (its parent is the
    folder it is joined to)."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and os.sep not in name
        and (os.altsep is None or os.altsep not in name)
        and "\0" not in name
    )


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
"""A new file, never an existing one, never through a symlink."""


def open_new(path: Path) -> BinaryIO:
    """``path`` created here and opened for writing: never an existing file, never
    through a symlink (``O_EXCL``, ``O_NOFOLLOW``); mode 0o666 less the umask.

    Raises:
        OSError: ``path`` exists (FileExistsError), or cannot be created.
    """
    return os.fdopen(os.open(path, _NEW_FILE, 0o666), "wb")


def _write_temp(folder: Path, stem: str, data: bytes, sync: bool = True) -> Path:
    """``data`` in a new temporary file of ``folder``, flushed to disk unless not ``sync``
    (mode 0o666 less the umask)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = inside(folder, f".{stem}.{secrets.token_hex(6)}.part")
    try:
        _fill(tmp, data, sync)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _fill(path: Path, data: bytes, sync: bool) -> None:
    """``data`` in the new file ``path`` (:func:`open_new`), flushed to disk if ``sync``."""
    with open_new(path) as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it (replacing it).

    The temporary file is new (``O_EXCL``, ``O_NOFOLLOW``: never a file or symlink
    planted under its name); ``sync=False`` skips flushing it to disk (for files
    that can be made again, such as thumbnails).

    Raises:
        OSError: the file cannot be written, or its name would leave its directory.
    """
    path = inside(path.parent, path.name)
    tmp = _write_temp(path.parent, path.name, data, sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_files(folder: Path, files: Sequence[tuple[str, bytes]], *, sync: bool = True) -> None:
    """Write each ``(name, data)`` of ``files`` to ``folder/name``, replacing what is there.

    One call for a group of files (the batch runner writes a group's images with
    one): the folder is made and checked once; each file goes to a new temporary
    file (``O_EXCL``, ``O_NOFOLLOW``), all are flushed to disk (``sync``), then each
    is renamed into place, so a reader never sees a partial file, and once this
    returns every file is on disk. On an error the temporary files are removed
    (files already renamed stay).

    Raises:
        OSError: a file cannot be written, or a name would leave ``folder``.
    """
    if not files:
        return
    for name, _ in files:
        if not _plain(name):
            raise OSError(errno.EPERM, f"refusing to write {name!r}: it would leave {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    temps: list[Path] = []
    renamed = 0
    try:
        for index, (name, data) in enumerate(files):
            temps.append(folder / f".{name}.{token}{index}.part")
            _fill(temps[-1], data, sync)
        for (name, _), tmp in zip(files, temps, strict=True):
            os.replace(tmp, folder / name)
            renamed += 1
    finally:
        for tmp in temps[renamed:]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_new(folder: Path, stem: str, ext: str, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``folder/{stem}.{ext}``, or ``{stem}-1.{ext}``, ... if taken.

    The bytes go to a temporary file in the same directory (created with mode
    0o666, so the umask applies), are flushed to disk, then hard-linked to the
    first free name: an existing file is never replaced (unless ``overwrite``:
    then it is renamed over ``{stem}.{ext}``), and a reader never sees a
    partial image. Returns the path written.

    Raises:
        OSError: the file cannot be written (or the file system has no hard links),
            or its name would leave ``folder``.
    """
    if overwrite:
        path = inside(folder, f"{stem}.{ext}")
        write_atomic(path, data)
        return path
    tmp = _write_temp(folder, stem, data)
    try:
        for n in itertools.count():
            path = inside(folder, f"{stem}.{ext}" if n == 0 else f"{stem}-{n}.{ext}")
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            return path
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
