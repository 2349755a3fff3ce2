"""``python -m asyncimg.testing``: run the emulator until Ctrl-C (as ``asyncimg serve``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._serve import add_serve_options, serve_from_args


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m asyncimg.testing",
        description="Run the asyncimg emulator of the OpenAI Images API "
        "(the same as `asyncimg serve`).",
    )
    add_serve_options(parser)
    return serve_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
