"""Names a package loads from their modules on first use (its module ``__getattr__``).

The front door, the batch wing and ``asyncimg.testing`` each keep a table of
where their lazy names live; this is the one loader they share, so that
``import asyncimg`` pays for none of those modules until a name is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, namespace: MutableMapping[str, Any], homes: Mapping[str, str]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name of ``homes`` is imported from
    its module (relative to ``package``, e.g. ``"._sync"``, or absolute) when first
    asked for, then kept in ``namespace`` (the package's globals).

    The function raises AttributeError for a name that is not in ``homes``.
    """

    def load(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value
        return value

    return load
