"""``python -m asyncimg.testing``: run the emulator until Ctrl-C."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._emulator import serve


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m asyncimg.testing",
        description="Run the asyncimg emulator of the OpenAI Images API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", default=None, help="the key to expect (default: any)")
    parser.add_argument(
        "--images-per-minute", type=int, default=None, help="answer 429 above this many images"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--url-ttl", type=float, default=3600.0, help="seconds a url result stays valid"
    )
    parser.add_argument(
        "--azure", action="store_true", help="serve the Azure OpenAI paths (key as api-key)"
    )
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        api_key=args.api_key,
        images_per_minute=args.images_per_minute,
        latency=args.latency,
        url_ttl=args.url_ttl,
        azure=args.azure,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
