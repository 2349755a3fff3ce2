"""The emulator as a process: :func:`serve`, and its options, shared by
``asyncimg serve`` and ``python -m asyncimg.testing`` (one set, so the two
never drift apart).

This module does not import the emulator (nor aiohttp.web) until it serves:
``asyncimg --help`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["add_serve_options", "positive_int", "serve", "serve_from_args"]


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not one.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: the system picks one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="where to listen (127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8089, help="the API's port; 0 picks one"
    )
    parser.add_argument("--api-key", help="the key to expect (default: any, or none)")
    parser.add_argument(
        "--images-per-minute", type=positive_int, metavar="N",
        help="answer 429 with Retry-After above N images a minute (default: no limit)",
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds before each answer"
    )
    parser.add_argument(
        "--api-latency", type=float, default=0.0, metavar="S",
        help="seconds before each Files and Batches answer (default: 0; --latency is the "
        "images endpoints')",
    )
    parser.add_argument(
        "--latency-sigma", type=float, default=0.0, metavar="SIGMA",
        help="a lognormal spread of --latency around it (its median); 0: fixed",
    )
    parser.add_argument(
        "--download-latency", type=float, default=0.0, metavar="S",
        help="seconds before each url download answers (default: 0)",
    )
    parser.add_argument(
        "--url-ttl", type=float, default=3600.0, metavar="S",
        help="seconds a url result stays downloadable (default: 3600, as the API)",
    )
    parser.add_argument(
        "--journal-size", type=positive_int, default=10_000, metavar="N",
        help="requests kept in the journal (default: 10000)",
    )
    parser.add_argument(
        "--max-urls", type=positive_int, default=10_000, metavar="N",
        help="url results kept downloadable; older ones answer 404 (default: 10000)",
    )
    parser.add_argument(
        "--azure", action="store_true",
        help="serve the Azure OpenAI paths (/openai/deployments/NAME/images/...?api-version=), "
        "the key as api-key",
    )
    parser.add_argument(
        "--any-model", action="store_true",
        help="take any model name, as a compatible server does (default: an unknown model "
        "answers 404 model_not_found, as the API)",
    )


def serve_from_args(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C with the options of :func:`add_serve_options`; the exit status.

    Raises:
        OSError: the port cannot be bound.
    """
    serve(
        args.host, args.port, api_key=args.api_key, images_per_minute=args.images_per_minute,
        latency=args.latency, url_ttl=args.url_ttl, journal_size=args.journal_size,
        max_urls=args.max_urls, latency_sigma=args.latency_sigma,
        download_latency=args.download_latency, azure=args.azure,
        api_latency=args.api_latency, any_model=args.any_model,
    )
    return 0


def serve(host: str = "127.0.0.1", port: int = 8089, **emulator_options: Any) -> None:
    """Run an emulator until Ctrl-C or SIGTERM (blocking); prints its base urls first.

    ``emulator_options`` are :class:`Emulator`'s other arguments.

    Raises:
        OSError: the port cannot be bound.
    """

    def ready(emu: Emulator) -> None:
        if emu.azure:
            print(
                f"asyncimg emulator (Azure OpenAI) listening on {emu.endpoint}: "
                f"{emu.endpoint}/openai/deployments/NAME/images/...?api-version=... "
                f"(url results on {emu.blob_base_url}; Ctrl-C or SIGTERM to stop)",
                flush=True,
            )
            return
        print(
            f"asyncimg emulator listening on {emu.base_url} (url results on "
            f"{emu.blob_base_url}; Ctrl-C or SIGTERM to stop)",
            flush=True,
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever({"host": host, "port": port, **emulator_options}, ready))


async def _serve_forever(options: Mapping[str, Any], ready: Callable[[Emulator], None]) -> None:
    from ._emulator import Emulator  # aiohttp.web: only when serving

    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals here: Ctrl-C only
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Emulator(**options) as emu:
        ready(emu)
        await stop.wait()
