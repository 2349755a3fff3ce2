"""MkDocs hooks: the pages generated at build time, from the code rather than by hand.

* ``reference/api.md``: one mkdocstrings entry per name of ``asyncimg.__all__``; a public
  name without a docstring stops the build (read statically by griffe, as mkdocstrings
  renders it, so a type alias documents itself with a string after its assignment);
* ``reference/cli.md``: the help of ``asyncimg`` and of each subcommand, from
  ``asyncimg.cli.build_parser()``;
* ``changelog.md``: CHANGELOG.md as it is.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import griffe
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def public_names() -> list[str]:
    """The names of ``asyncimg.__all__`` that the reference documents (not ``__version__``)."""
    import asyncimg

    return [name for name in asyncimg.__all__ if not name.startswith("_")]


def undocumented(names: list[str]) -> list[str]:
    """The names among ``names`` whose object in ``asyncimg`` has no docstring."""
    package = griffe.load("asyncimg", search_paths=[str(ROOT)], resolve_aliases=True)
    missing = []
    for name in names:
        obj = package[name]
        target = obj.final_target if obj.is_alias else obj
        if target.docstring is None or not target.docstring.value.strip():
            missing.append(name)
    return missing


def api_page(names: list[str]) -> str:
    """The API reference's Markdown: a heading and a mkdocstrings directive per name."""
    parts = [
        "# API reference\n\n",
        "Every public name of `asyncimg` (its `__all__`), generated from the docstrings.\n",
    ]
    for name in sorted(names, key=str.lower):
        parts.append(f"\n::: asyncimg.{name}\n")
    return "".join(parts)


def _commands(
    name: str, parser: argparse.ArgumentParser
) -> list[tuple[str, argparse.ArgumentParser]]:
    """``parser`` under ``name``, then each of its subcommands (theirs too), in order."""
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _commands(f"{name} {sub_name}", sub)
    return found


def cli_page() -> str:
    """The CLI reference's Markdown: each command's ``--help``, as argparse prints it."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: a fixed one
    from asyncimg.cli import build_parser

    parts = [
        "# Command line\n\n",
        "`asyncimg --help` and each command's `--help`, generated from the parser.\n",
    ]
    for name, parser in _commands("asyncimg", build_parser()):
        parts.append(f"\n## {name}\n\n```text\n{parser.format_help()}```\n")
    return "".join(parts)


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages; refuse to build if a public name has no docstring."""
    names = public_names()
    missing = undocumented(names)
    if missing:
        raise PluginError(f"public names without a docstring: {', '.join(missing)}")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    for path, content in (
        ("reference/api.md", api_page(names)),
        ("reference/cli.md", cli_page()),
        ("changelog.md", changelog),
    ):
        files.append(File.generated(config, path, content=content))
    return files
