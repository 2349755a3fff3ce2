"""The report's thumbnails in ``DIR/.thumbs/``, and what it remembers about each image.

:func:`make_thumbnails` decides, for each image of the gallery, what the page shows:
a small copy made with Pillow, or the image itself when it is already small (or
Pillow cannot read it, or its header says it has more pixels than are decoded).
Deciding means opening the image, so the answer is remembered in
``.thumbs/cache.json``, keyed by the image's name, size and ``mtime_ns``: a rerun
of the report opens only the images that are new or were replaced since. An entry
whose image changed is never used; a thumbnail that is gone is made again; a
cache file that is corrupt, foreign, of another version or not a regular file is
passed over and written anew (atomically, never through a symlink; when it cannot be
written, the next report opens the images again).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from .._files import pixel_problem, size_problem
from .._fs import write_atomic

__all__ = ["CACHE_NAME", "THUMBS_DIR", "THUMB_SIZE", "check_real_directory", "make_thumbnails"]

THUMBS_DIR: Final = ".thumbs"
THUMB_SIZE: Final = 256
CACHE_NAME: Final = "cache.json"
_CACHE_VERSION: Final = 1
_CACHE_MAX_BYTES: Final = 256 * 1024 * 1024
"""A larger file in its place is not a cache this module wrote: it is not read."""
_BROWSER_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
_HEADER_BYTES: Final = 256 * 1024
"""Read to find an image's size before decoding it (a JPEG's frame header may follow
its EXIF data)."""

_Key = tuple[int, int]
"""An image's size and ``mtime_ns``: an entry made for other values is stale."""


def make_thumbnails(directory: Path, names: Sequence[str]) -> dict[str, str] | None:
    """Small copies of the images ``names`` in ``directory/.thumbs/``, made with Pillow.

    Returns the relative path to show for each name: its thumbnail, or the image
    itself when it is already small (or Pillow cannot read it, or its header says
    it has more pixels than are decoded: :data:`~asyncimg._files.MAX_IMAGE_PIXELS`).
    A JPEG is decoded at the smallest scale that still covers the thumbnail. What
    was decided for an image is remembered in ``.thumbs/cache.json`` while the
    image keeps its size and ``mtime_ns`` (and its thumbnail exists), so a rerun
    does not open it again; a thumbnail newer than its image is reused. Returns
    None when Pillow is not installed (the ``images`` extra): the page then shows
    the images scaled by the browser.

    Raises:
        OSError: ``directory/.thumbs`` exists and is not a directory (a symlink
            is refused: thumbnails never go elsewhere) or cannot be made.
    """
    try:
        from PIL import Image, UnidentifiedImageError, features
    except ImportError:
        return None
    suffix = ".webp" if features.check("webp") else ".png"
    folder = directory / THUMBS_DIR
    check_real_directory(folder)
    known = _read_cache(folder / CACHE_NAME, suffix)
    try:
        made = set(os.listdir(folder))
    except FileNotFoundError:
        made = set()
    base = os.fspath(directory)

    def thumb_of(name: str) -> str:
        return os.path.splitext(name)[0] + suffix

    def from_cache(name: str) -> tuple[_Key | None, bool | None]:
        """The image's key (None: it cannot be read now) and what the cache (or a
        thumbnail newer than the image) says of its thumbnail; None: open the image."""
        try:
            st = os.stat(os.path.join(base, name))
        except OSError:
            return None, False
        key = (st.st_size, st.st_mtime_ns)
        entry = known.get(name)
        if entry is not None and entry[0] == key and (not entry[1] or thumb_of(name) in made):
            return key, entry[1]
        if thumb_of(name) in made:
            try:
                if (folder / thumb_of(name)).stat().st_mtime_ns >= st.st_mtime_ns:
                    return key, True
            except OSError:
                pass
        return key, None

    def decide(name: str, key: _Key) -> tuple[_Key | None, bool]:
        """The image's key (None: it cannot be read now) and whether it has a thumbnail."""
        try:
            with open(os.path.join(base, name), "rb") as f:
                if pixel_problem(f.read(_HEADER_BYTES)) is not None:
                    return key, False
            with Image.open(os.path.join(base, name)) as img:
                if max(img.size) <= THUMB_SIZE and img.format in _BROWSER_FORMATS:
                    return key, False
                if size_problem(*img.size) is not None:
                    return key, False
                img.thumbnail((THUMB_SIZE, THUMB_SIZE))  # draft(): JPEG at a reduced scale
                if img.mode not in ("RGB", "RGBA"):
                    img = img.convert("RGBA")
                out = io.BytesIO()
                img.save(out, format=suffix[1:].upper(), quality=80, method=0)
            folder.mkdir(exist_ok=True)
            check_real_directory(folder)
            write_atomic(folder / thumb_of(name), out.getvalue(), sync=False)
        except (ValueError, Image.DecompressionBombError, UnidentifiedImageError):
            return key, False  # not an image Pillow reads: it is shown as it is
        except OSError:
            return None, False  # perhaps passing: not remembered
        return key, True

    workers = min(4, os.cpu_count() or 1)
    decided: dict[str, tuple[_Key | None, bool]] = {}
    opened: list[tuple[str, _Key]] = []
    for name in names:
        key, thumb = from_cache(name)
        if key is not None and thumb is None:
            opened.append((name, key))
        else:
            decided[name] = key, bool(thumb)
    if opened:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            decided.update(zip((name for name, _ in opened),
                               pool.map(lambda job: decide(*job), opened), strict=True))
    remembered = {name: (key, thumb) for name, (key, thumb) in decided.items() if key is not None}
    if remembered != known:
        folder.mkdir(exist_ok=True)
        check_real_directory(folder)
        with contextlib.suppress(OSError):  # e.g. a directory in its place: no cache, then
            write_atomic(folder / CACHE_NAME, _cache_bytes(remembered, suffix), sync=False)
    return {
        name: f"{THUMBS_DIR}/{thumb_of(name)}" if thumb else name
        for name, (_, thumb) in decided.items()
    }


def _cache_bytes(entries: Mapping[str, tuple[_Key, bool]], suffix: str) -> bytes:
    """The cache file: its version and thumbnail format, then ``name: [size, mtime_ns, thumb]``."""
    body = {
        "asyncimg_thumbs": _CACHE_VERSION,
        "size": THUMB_SIZE,
        "suffix": suffix,
        "images": {name: [size, mtime, thumb] for name, ((size, mtime), thumb) in entries.items()},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _read_cache(path: Path, suffix: str) -> dict[str, tuple[_Key, bool]]:
    """The entries of the cache at ``path``; none when it is missing, unreadable, not a
    regular file, of another version or thumbnail format, or not what this module writes
    (an odd entry alone is passed over)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _CACHE_MAX_BYTES:
                return {}
            body = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(body, dict) or (
        body.get("asyncimg_thumbs"), body.get("size"), body.get("suffix")
    ) != (_CACHE_VERSION, THUMB_SIZE, suffix):
        return {}
    images = body.get("images")
    if not isinstance(images, dict):
        return {}
    entries: dict[str, tuple[_Key, bool]] = {}
    for name, entry in images.items():
        if (
            isinstance(entry, list) and len(entry) == 3
            and all(type(v) is int for v in entry[:2]) and type(entry[2]) is bool
        ):
            entries[name] = ((entry[0], entry[1]), entry[2])
    return entries


def check_real_directory(folder: Path) -> None:
    """Refuse ``folder`` when it exists as anything but a directory (a symlink included).

    Raises:
        OSError: (ENOTDIR) it is a symlink or a file.
    """
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise OSError(
            errno.ENOTDIR, f"{folder} is not a directory of its own (a symlink?); remove it"
        )
