"""The ``asyncimg`` command (also ``python -m asyncimg``).

::

    asyncimg batch PROMPTS -o DIR      many prompts, resumable, with a manifest
                       --via batch-api   ... handed to OpenAI's Batch API
    asyncimg batches status|cancel DIR the Batch API batches of DIR
    asyncimg generate PROMPT           one generation
    asyncimg edit IMAGE PROMPT         one edit (--mask M)
    asyncimg variation IMAGE           variations of an image (--prepare)
    asyncimg prepare IN [-o OUT]       an image made ready for the API (asyncimg[images])
    asyncimg serve                     run the emulator
    asyncimg report DIR                DIR/index.html: gallery, failures, rate chart

Exit status (the same for every command):

===  =====================================================================
0    everything succeeded
1    some items failed (listed in the summary and the manifest), including
     failures kept from an earlier run with ``--no-retry-failed``
2    a usage error: a bad option or input, caught before anything is sent
3    stopped by a fatal error from the API, which would fail every item
     (401 key refused, 403 permission denied, 404 model or URL not found,
     429 quota or billing limit): nothing new was sent after it
4    aborted by a local failure (a full disk, an unwritable directory)
5    stopped at the budget (``--max-cost``): the next request could have taken
     the spend over it; a rerun with a larger budget resumes
130  interrupted by Ctrl-C (SIGINT)
143  terminated by SIGTERM
===  =====================================================================

A stopped batch (3, 4, 5, 130, 143) sends nothing new, records every item that
finished before it stopped, and rerunning the same command resumes. The first
Ctrl-C or SIGTERM lets the requests in flight finish; a second cancels them.

rich draws the progress bar and the summary when standard error is a terminal;
it is imported only then.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import functools
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._batch import ProgressSink, fatal_error
from ._exceptions import APIError, AsyncImgError, ValidationError
from ._files import EXTENSIONS
from ._keywords import EDIT_KEYWORDS, GENERATE_KEYWORDS, OPTIONS, VARIATION_KEYWORDS
from ._limiter import Limiter, RateLimit, RateLimiter
from ._version import __version__
from .testing._serve import add_serve_options, positive_int, serve_from_args

if TYPE_CHECKING:
    from ._batch import BatchControl, BatchSummary, Record
    from ._client import AsyncImagesClient
    from ._cost import PriceTable
    from ._redis import RedisLimiter

__all__ = ["main", "parse_rate"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_ABORTED = 4
EXIT_BUDGET = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
_EXIT_SIGNAL = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
_EXIT_HELP = (
    "exit status: 0 all succeeded, 1 some items failed, 2 usage error (nothing sent), "
    "3 stopped by a fatal API error (401, 403, 404, 429 quota) or --redis out of reach, "
    "4 aborted by a local failure (a full disk), 5 stopped at --max-cost, 130 Ctrl-C, "
    "143 SIGTERM"
)
# The option a user typed, by the parameter its value became.
_FLAGS = {
    "model": "--model", "n": "-n", "size": "--size", "quality": "--quality",
    "response_format": "--format", "output_format": "--output-format",
    "output_compression": "--output-compression", "background": "--background",
    "moderation": "--moderation", "style": "--style", "user": "--user",
    "input_fidelity": "--input-fidelity", "mask": "--mask", "image": "IMAGE",
    "prompt": "PROMPT", "api_key": "OPENAI_API_KEY", "max_concurrency": "--concurrency",
    "max_retries": "--max-retries", "timeout": "--timeout",
}

_RATE = re.compile(r"^\s*([0-9]+)\s*(?:/\s*([0-9]*\.?[0-9]*)\s*(s|sec|m|min|h|hour)?)?\s*$")
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_EMULATOR_KEY = "sk-asyncimg-emulator"


class UsageError(Exception):
    """A bad command line or input: exit status 2."""


def _flag_message(exc: ValidationError) -> str:
    """``exc`` as the command line's words: the flag first, the parameter not twice."""
    param = exc.param.split("[", 1)[0]
    flag = _FLAGS.get(param, param)
    text = exc.message
    for prefix in (f"{exc.param}: ", f"{param}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if param == "api_key":
        return (
            "no API key: set OPENAI_API_KEY (or use --base-url for a server that needs "
            "none, or --emulator to try it offline)"
        )
    return f"{flag}: {text}"


def parse_rate(text: str) -> RateLimit | None:
    """``50/min``, ``5/s``, ``20/2s``, ``1000/h`` or ``50`` (per minute); ``off`` -> None.

    Raises:
        ValueError: the text is none of those.
    """
    if text.strip().lower() in ("off", "none", "0"):
        return None
    found = _RATE.match(text.lower())
    if found is None or (found.group(2) is None and "/" in text) or (
        found.group(2) is not None and found.group(2) == "" and found.group(3) is None
    ):
        raise ValueError(f"not a rate: {text!r} (try 50/min, 5/s, 20/2s or off)")
    images = int(found.group(1))
    if found.group(2) is None:
        return RateLimit(images=images, per=60.0)
    count = float(found.group(2)) if found.group(2) else 1.0
    unit = _UNITS[found.group(3) or "s"]
    return RateLimit(images=images, per=count * unit)


def _rate_arg(text: str) -> RateLimit | None:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _box_arg(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    try:
        x0, y0, x1, y1 = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not X0,Y0,X1,Y1 in whole pixels: {text!r}"
        ) from None
    return x0, y0, x1, y1


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text}")
    return value


def _usd(text: str) -> float:
    try:
        value = float(text.lstrip("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite amount > 0: {text}")
    return value


# -- the parser -------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--base-url", help="the API's base URL (default $OPENAI_BASE_URL or OpenAI)")
    g.add_argument(
        "--rate", type=_rate_arg, default=RateLimit(images=50, per=60.0), metavar="RATE",
        help="images per window: 50/min (default), 5/s, 20/2s, or off",
    )
    g.add_argument(
        "--redis", metavar="URL", default=os.environ.get("ASYNCIMG_REDIS_URL"),
        help="share --rate through this Redis with every process using the same "
        "--limit-name (default $ASYNCIMG_REDIS_URL)",
    )
    g.add_argument(
        "--limit-name", default="openai-images", metavar="NAME",
        help="which shared budget (with --redis): one per organization and model family",
    )
    g.add_argument(
        "--concurrency", type=positive_int, default=None,
        help="a hard ceiling on requests in flight (default: sized from --rate and the "
        "answer times, 16 to 512)",
    )
    g.add_argument("--max-retries", type=int, default=3, help="retries per request")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds for one attempt")
    g.add_argument(
        "--emulator", action="store_true",
        help="run against an emulator started in this process (no key needed)",
    )
    g.add_argument(
        "--emulator-latency", type=float, default=0.0, metavar="S",
        help="the emulator's answer delay in seconds (with --emulator)",
    )
    return common


def _image_options(*, style: bool = True, gpt: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("image parameters (left out: the server's default)")
    g.add_argument("--model", help="dall-e-2, dall-e-3, gpt-image-1, ...")
    g.add_argument("-n", type=int, dest="n", help="images per prompt")
    g.add_argument("--size", help="e.g. 1024x1024, 256x256, auto")
    g.add_argument(
        "--format", dest="response_format", choices=("url", "b64_json"),
        help="response_format (dall-e models)",
    )
    g.add_argument("--user", help="an end-user id for abuse monitoring")
    if gpt:
        g.add_argument("--quality", help="standard, hd, low, medium, high, auto")
        g.add_argument("--output-format", choices=("png", "jpeg", "webp"))
        g.add_argument("--output-compression", type=int, metavar="0-100")
        g.add_argument("--background", choices=("transparent", "opaque", "auto"))
    if style:
        g.add_argument("--moderation", choices=("low", "auto"))
        g.add_argument("--style", choices=("vivid", "natural"))
    return common


_PARAM_NAMES = {
    "batch": GENERATE_KEYWORDS - OPTIONS,
    "generate": GENERATE_KEYWORDS - OPTIONS,
    "edit": EDIT_KEYWORDS - OPTIONS,
    "variation": VARIATION_KEYWORDS - OPTIONS,
}


def _stream_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("streaming (GPT image models)")
    g.add_argument(
        "--stream", action="store_true",
        help="stream: write each partial image as it arrives, then the final one",
    )
    g.add_argument(
        "--partial-images", type=int, metavar="0-3",
        help="partial images before the final one (with --stream)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asyncimg`` command."""
    parser = argparse.ArgumentParser(
        prog="asyncimg",
        description="Generate, edit and vary images with the OpenAI Images API "
        "(or any server that speaks it). The key comes from $OPENAI_API_KEY.",
        epilog=_EXIT_HELP,
    )
    parser.add_argument("--version", action="version", version=f"asyncimg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    conn = _connection_options()

    batch = sub.add_parser(
        "batch", parents=[_image_options(), conn],
        help="generate images for every prompt of a file, resumably",
        description="Generate images for every prompt of PROMPTS into DIR, with "
        "DIR/manifest.jsonl recording each finished item. Rerunning with the same "
        "input and DIR skips what is done and retries what failed.",
        epilog=_EXIT_HELP,
    )
    batch.add_argument(
        "prompts", metavar="PROMPTS", help=".txt, .jsonl or .csv file, or - for stdin"
    )
    batch.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    batch.add_argument(
        "--input-format", choices=("txt", "jsonl", "csv"),
        help="the input's format (default: from the suffix; txt for stdin)",
    )
    batch.add_argument(
        "--retry-failed", action=argparse.BooleanOptionalAction, default=True,
        help="run items that failed in an earlier run again (default: yes)",
    )
    batch.add_argument(
        "--encoding", default="utf-8", metavar="CODEC",
        help="the prompts file's text encoding (default: utf-8; e.g. cp1252, latin-1)",
    )
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary")
    batch.add_argument(
        "--report", action="store_true",
        help="write DIR/index.html (see `asyncimg report`) at the end and print its path",
)
    cost = batch.add_argument_group("cost")
    cost.add_argument(
        "--prices", metavar="FILE",
        help="a JSON file of prices (USD per 1M tokens by model) over the shipped table",
    )
    cost.add_argument(
        "--dry-run", action="store_true",
        help="send nothing: print the items, images, time and estimated cost, and exit 0",
    )
    cost.add_argument(
        "--max-cost", type=_usd, metavar="USD",
        help="stop before the directory's spend could go over USD (exit status 5); "
        "a rerun with a larger budget resumes",
    )
    route = batch.add_argument_group("the Batch API route")
    route.add_argument(
        "--via", choices=("direct", "batch-api"), default="direct",
        help="direct: call the images endpoint under --rate (default); batch-api: hand the "
        "items to OpenAI's Batch API (within 24 h, half the price, its own limits)",
    )
    route.add_argument(
        "--poll-interval", type=_seconds, default=60.0, metavar="SECONDS",
        help="with --via batch-api: seconds between polls of the batch (default 60)",
    )
    route.add_argument(
        "--completion-window", default="24h", choices=("24h",),
        help="with --via batch-api: the batch's completion window",
    )

    generate = sub.add_parser(
        "generate", parents=[_image_options(), conn], help="generate images for one prompt"
    )
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument("-o", "--output", default=".", metavar="DIR", help="default: .")
    _stream_options(generate)

    edit = sub.add_parser(
        "edit", parents=[_image_options(style=False), conn], help="edit an image"
    )
    edit.add_argument("image", metavar="IMAGE", help="the image to edit (a PNG for dall-e-2)")
    edit.add_argument("prompt", metavar="PROMPT")
    masks = edit.add_mutually_exclusive_group()
    masks.add_argument("--mask", metavar="M", help="a PNG whose transparent areas mark the edit")
    masks.add_argument(
        "--mask-box", type=_box_arg, metavar="X0,Y0,X1,Y1",
        help="edit this box of the image (pixels; x1, y1 excluded); needs asyncimg[images]",
    )
    edit.add_argument("--input-fidelity", choices=("high", "low"))
    edit.add_argument("-o", "--output", default=".", metavar="DIR", help="default: .")
    _stream_options(edit)

    variation = sub.add_parser(
        "variation", parents=[_image_options(style=False, gpt=False), conn],
        help="create variations of an image (dall-e-2)",
    )
    variation.add_argument("image", metavar="IMAGE")
    variation.add_argument("-o", "--output", default=".", metavar="DIR", help="default: .")
    variation.add_argument(
        "--prepare", action="store_true",
        help="make IMAGE what the model needs (a square PNG for dall-e-2) instead of refusing "
        "it; needs asyncimg[images]",
    )

    prepare = sub.add_parser(
        "prepare", help="make an image ready for the API (needs asyncimg[images])",
        description="Write IN as a square RGBA PNG under 4 MB (EXIF orientation applied), or "
        "as what --for MODEL's rules need. Prints the file written.",
    )
    prepare.add_argument("input", metavar="IN", help="a picture in any format Pillow reads")
    prepare.add_argument(
        "-o", "--output", metavar="OUT", help="default: IN's name with -prepared, beside it"
    )
    prepare.add_argument(
        "--size", type=positive_int, help="the square's edge in pixels (default 1024; not "
        "with --for, whose rules choose it)",
    )
    prepare.add_argument(
        "--fit", choices=("pad", "crop"), default="pad",
        help="pad: all of the picture on a transparent square (default); crop: its centre",
    )
    prepare.add_argument(
        "--for", dest="for_model", metavar="MODEL",
        help="prepare for MODEL: dall-e-2 a square PNG; GPT image models the image as it "
        "is when they take it",
    )

    report = sub.add_parser(
        "report", help="write DIR/index.html: a gallery, the failures and a rate chart",
        description="Write DIR/index.html from DIR/manifest.jsonl: a card per item "
        "(failures with their error), filters and a search, the summary and a chart "
        "of the images sent per window against the rate limit. One file plus "
        "thumbnails in DIR/.thumbs (made when Pillow, the `images` extra, is installed); "
        "it works from file:// with no network. Prints the page's path.",
    )
    report.add_argument("directory", metavar="DIR", help="the -o DIR of a batch")
    report.add_argument(
        "--no-thumbnails", dest="thumbnails", action="store_false",
        help="show the images themselves, scaled by the browser",
    )

    batches = sub.add_parser(
        "batches", help="the Batch API batches of an output directory",
        description="Look at or cancel the Batch API batches recorded in DIR by "
        "`asyncimg batch --via batch-api`.",
    )
    batches_sub = batches.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("status", "show each batch's status and counts"),
                         ("cancel", "cancel the batches still running")):
        one = batches_sub.add_parser(action, parents=[conn], help=text)
        one.add_argument("output", metavar="DIR")

    serve = sub.add_parser(
        "serve", help="run the emulator until Ctrl-C",
        description="Run the emulator of the Images API (the same as "
        "`python -m asyncimg.testing`). Url results are served on a second port, "
        "printed at start.",
    )
    add_serve_options(serve)
    return parser


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name)
        for name in sorted(_PARAM_NAMES[args.command])
        if getattr(args, name, None) is not None
    }


# -- running ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[AsyncImagesClient]:
    from ._client import AsyncImagesClient

    async with contextlib.AsyncExitStack() as stack:
        limiter: RateLimiter = Limiter(args.rate)
        if args.redis:
            shared = _redis_limiter(args)
            stack.push_async_callback(shared.aclose)
            limiter = shared
        base_url = args.base_url
        api_key = None
        if args.emulator:
            from .testing import Emulator

            emu = await stack.enter_async_context(Emulator(latency=args.emulator_latency))
            base_url, api_key = emu.base_url, _EMULATOR_KEY
        client = AsyncImagesClient(
            api_key=api_key,
            base_url=base_url,
            limiter=limiter,
            max_concurrency=args.concurrency,
            max_retries=args.max_retries,
            timeout=args.timeout,
        )
        yield await stack.enter_async_context(client)


def _redis_limiter(args: argparse.Namespace) -> RedisLimiter:
    """The shared limiter of ``--redis`` and ``--limit-name``; UsageError when unusable."""
    if args.rate is None:
        raise UsageError("--redis: a shared limit needs a --rate (not off)")
    from ._redis import RedisLimiter, check_name

    try:
        check_name(args.limit_name)
    except ValueError as exc:
        raise UsageError(f"--limit-name: {exc}") from None
    try:
        return RedisLimiter.from_url(args.redis, rate=args.rate, name=args.limit_name)
    except ImportError as exc:
        raise UsageError(f"--redis: {exc}") from None
    except ValueError:  # never echo the URL: it may hold a password
        raise UsageError("--redis: not a redis://, rediss:// or unix:// URL") from None


async def _streamed(
    client: AsyncImagesClient, args: argparse.Namespace, params: dict[str, Any], err: TextIO
) -> list[Path]:
    """Stream one generation or edit, writing each image as its event arrives."""
    from ._stream import CompletedImageEvent, PartialImageEvent

    if args.command == "generate":
        stream = await client.generate(args.prompt, stream=True, **params)
    else:
        stream = await client.edit(args.image, args.prompt, stream=True, **params)
    total = params.get("partial_images") or 0
    paths = []
    async with stream:
        async for event in stream:
            if isinstance(event, PartialImageEvent):
                path = await client.save_event(event, args.output)
                index = (event.partial_image_index or 0) + 1
                print(f"partial {index}/{total}: {path}", file=err, flush=True)
            elif isinstance(event, CompletedImageEvent):
                paths.append(await client.save_event(event, args.output))
                print(f"completed: {paths[-1]}", file=err, flush=True)
    return paths


async def _single(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    params = _params(args)
    if params.get("partial_images") is not None and not args.stream:
        raise UsageError("--partial-images needs --stream")
    async with _client(args) as client:
        try:
            if getattr(args, "stream", False):
                for path in await _streamed(client, args, params, err):
                    print(path, file=out)
                return EXIT_OK
            if args.command == "generate":
                response = await client.generate(args.prompt, **params)
            elif args.command == "edit":
                response = await client.edit(args.image, args.prompt, **params)
            else:
                response = await client.create_variation(args.image, **params)
            paths = await client.save(response, args.output)
        except ValidationError as exc:
            print(f"asyncimg: error: {_flag_message(exc)}", file=err)
            return EXIT_USAGE
        except APIError as exc:
            print(f"asyncimg: {type(exc).__name__}: {exc}", file=err)
            fatal = fatal_error(exc)
            if fatal is not None:
                print(f"asyncimg: {fatal}", file=err)
                return EXIT_FATAL
            return EXIT_FAILED
    for path in paths:
        print(path, file=out)
    for image in response.data:
        if image.revised_prompt:
            print(f"revised prompt: {image.revised_prompt}", file=err)
    return EXIT_OK


def _check_paths(args: argparse.Namespace) -> None:
    """Usage errors about PROMPTS and -o, before anything starts.

    Raises:
        UsageError: the prompts file is missing or a directory; the output is a
            file, or cannot be created or written.
    """
    if args.prompts != "-":
        prompts = Path(args.prompts)
        if prompts.is_dir():
            raise UsageError(f"PROMPTS: {prompts} is a directory; give a prompts file")
        if not prompts.is_file():
            raise UsageError(f"PROMPTS: no such file: {prompts}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o: {out} is a file; give a directory for the images")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"-o: cannot create {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"-o: cannot create or write {out}: {existing} is not writable")
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise UsageError(f"--encoding: unknown encoding {args.encoding!r}") from None


def _prices(args: argparse.Namespace) -> PriceTable:
    from ._cost import load_prices

    try:
        return load_prices(args.prices)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--prices: {exc}") from None


async def _batch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._batch import BatchControl, InputError, detect_format, open_text, plan_batch, run_batch
    from ._cost import Budget

    fmt = detect_format(args.prompts, args.input_format)
    prices = _prices(args)
    if args.dry_run:
        try:
            plan = plan_batch(
                open_text(args.prompts, args.encoding), fmt, args.output, params=_params(args),
                prices=prices, rate=args.rate, batch_api=args.via == "batch-api",
            )
        except InputError as exc:
            raise UsageError(str(exc)) from None
        print("\n".join(plan.lines()), file=out)
        return EXIT_OK
    if args.max_cost is not None and args.via == "batch-api":
        raise UsageError("--max-cost: the Batch API bills a whole batch; use --via direct")
    quiet = args.quiet
    progress: _Plain | None = None
    if not quiet:
        progress = _Rich(err) if _isatty(err) else _Plain(err)
    control = BatchControl()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if control.signal is None:
            control.interrupt(signum)
            print(
                f"asyncimg: stopping: nothing new is sent; waiting for the {control.in_flight} "
                "requests in flight (again to cancel them)",
                file=err, flush=True,
            )
            return
        control.interrupt(signum)
        for each in _EXIT_SIGNAL:
            loop.remove_signal_handler(each)  # a third acts at once

    async with _client(args) as client:
        for signum in _EXIT_SIGNAL:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            if args.via == "batch-api":
                from ._batch import run_via_batch_api

                route = functools.partial(
                    run_via_batch_api, poll_interval=args.poll_interval,
                    completion_window=args.completion_window, prices=prices,
                )
            else:
                budget = None if args.max_cost is None else Budget(args.max_cost)
                route = functools.partial(
                    run_batch, count_first=args.prompts != "-", prices=prices, budget=budget
                )
            summary = await route(
                client,
                open_text(args.prompts, args.encoding),
                fmt,
                args.output,
                params=_params(args),
                retry_failed=args.retry_failed,
                progress=progress,
                server="the emulator (--emulator)" if args.emulator else None,
                control=control,
            )
        except ValidationError as exc:
            raise UsageError(_flag_message(exc)) from None
        except InputError as exc:
            raise UsageError(str(exc)) from None
        finally:
            for signum in _EXIT_SIGNAL:
                loop.remove_signal_handler(signum)
    if not quiet:
        _print_summary(summary, args, out, rich=isinstance(progress, _Rich))
    elif summary.failed or summary.failed_earlier:
        _print_failures(summary, err)
    if args.report:
        _report(args.output, thumbnails=True, out=out)
    return _batch_status(summary, control, err)


def _batch_status(summary: BatchSummary, control: BatchControl, err: TextIO) -> int:
    """Say why a batch stopped early, if it did; the exit status."""
    if summary.stopped is not None:
        resume = "finished items are recorded; rerun the same command to resume"
        if summary.stopped == "budget":
            resume = "finished items are recorded; rerun with a larger --max-cost to resume"
        print(f"asyncimg: stopped: {summary.stop_message}; {resume}", file=err)
        if summary.stopped == "fatal":
            return EXIT_FATAL
        if summary.stopped == "input":
            return EXIT_USAGE
        if summary.stopped == "budget":
            return EXIT_BUDGET
        if summary.stopped == "interrupted":
            return _EXIT_SIGNAL.get(signal.Signals(control.signal or signal.SIGINT), 130)
        return EXIT_ABORTED
    return EXIT_FAILED if summary.failed or summary.failed_earlier else EXIT_OK


def _report(directory: str, *, thumbnails: bool, out: TextIO) -> int:
    from ._batch import InputError, write_report

    try:
        path = write_report(directory, thumbnails=thumbnails)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    print(path, file=out)
    return EXIT_OK


async def _batches(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._batch import batches_status, cancel_batches

    async with _client(args) as client:
        if args.action == "cancel":
            for cancelled in await cancel_batches(client, args.output):
                print(f"{cancelled.id}: {cancelled.status}", file=out)
            return EXIT_OK
        jobs = await batches_status(client, args.output)
    if not jobs:
        print(f"no Batch API batches recorded in {args.output}", file=err)
    for job, batch in jobs:
        if batch is None:
            print(f"{job.filename}: not created yet ({job.lines} requests)", file=out)
            continue
        counts = batch.request_counts
        collected = ", results saved" if job.collected else ""
        print(f"{batch.id}: {batch.status}, {counts.completed}/{counts.total} completed, "
              f"{counts.failed} failed{collected}", file=out)
    if jobs and (Path(args.output) / "manifest.jsonl").is_file():
        from ._batch import directory_costs

        spent, observed = directory_costs(Path(args.output))
        saved = sum(count for count, _total, _top in observed.costs.values())
        print(f"spent: ${spent:.4f} on the {saved} results saved so far", file=out)
    return EXIT_OK


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _short(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_text(record: Record) -> str:
    error = record.error or {}
    code = f" ({error['code']})" if error.get("code") else ""
    request = f" [request id {record.request_id}]" if record.request_id else ""
    message = _short(str(error.get("message", "")), 160)
    return f"{error.get('type', 'Error')}{code}: {message}{request}"


def _eta(s: BatchSummary) -> str:
    left = s.eta
    return "?" if left is None else _duration(left)


class _Plain(ProgressSink):
    """Progress as plain lines: one per finished item, and a status line every 10 s."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = time.monotonic()
        self._last_batch: str | None = None
        self._gone = False

    def _say(self, line: str) -> None:
        """Print a line; a closed stream (``2>&1 | head``) silences progress, not the batch."""
        if self._gone:
            return
        try:
            print(line, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):
            self._gone = True

    def _status(self, s: BatchSummary) -> str:
        total = "?" if s.total is None else str(s.total)
        eta = f", ETA {_eta(s)}" if s.total is not None and s.stopped is None else ""
        return (
            f"{s.done}/{total} done, {s.failed} failed, {s.images_per_minute:.1f} images/min, "
            f"waited {_duration(s.waited)} on the rate limit{eta}"
        )

    def start(self, s: BatchSummary) -> None:
        skipped = f" ({s.skipped} already done)" if s.skipped else ""
        what = "reading prompts from stdin" if s.total is None else f"{s.total} items to run"
        self._say(f"batch: {what}{skipped}")

    def item(self, record: Record, s: BatchSummary) -> None:
        total = "?" if s.total is None else str(s.total)
        head = f"[{s.done}/{total}] line {record.line}"
        if record.ok:
            line = f"{head} ok {', '.join(record.files)} ({record.seconds:.1f}s)"
        else:
            line = f"{head} FAILED {_error_text(record)}"
        self._say(line)

    def _batch_line(self, s: BatchSummary) -> str | None:
        """A line for each new state of the Batch API route's batch (None: nothing new)."""
        batch = s.batch
        if batch is None:
            return None
        counts = batch.request_counts
        line = (f"batch {batch.id}: {batch.status}, {counts.completed}/{counts.total} "
                f"completed, {counts.failed} failed")
        if batch.note:
            line += f" ({batch.note})"
        if line == self._last_batch:
            return None
        self._last_batch = line
        return line

    def tick(self, s: BatchSummary) -> None:
        line = self._batch_line(s)
        if line is not None:
            self._say(line)
        now = time.monotonic()
        if now - self._last >= 10.0:
            self._last = now
            self._say(self._status(s))

    def stop(self, s: BatchSummary) -> None:
        self._say(self._status(s))


class _Rich(_Plain):
    """A rich progress bar on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = Console(file=stream)
        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[ipm]} img/min"),
            TextColumn("rate wait {task.fields[waited]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "batch", total=None, failed=0, ipm="0.0", waited="0s", eta="?"
        )

    def _update(self, s: BatchSummary, advance: int = 0) -> None:
        self.progress.update(
            self.task, total=s.total, advance=advance, failed=s.failed,
            ipm=f"{s.images_per_minute:.1f}", waited=_duration(s.waited), eta=_eta(s),
        )

    def start(self, s: BatchSummary) -> None:
        if s.skipped:
            self.console.print(f"{s.skipped} items already done, skipped")
        self._update(s)
        self.progress.start()

    def item(self, record: Record, s: BatchSummary) -> None:
        if not record.ok:
            self.progress.console.print(
                f"[red]line {record.line} failed[/red]: {_error_text(record)}", markup=True,
                highlight=False,
            )
        self._update(s, advance=1)

    def tick(self, s: BatchSummary) -> None:
        line = self._batch_line(s)
        if line is not None:
            self.progress.console.print(line, highlight=False)
        self._update(s)

    def stop(self, s: BatchSummary) -> None:
        self._update(s)
        self.progress.stop()


_KEPT_FAILED = "failed in an earlier run, not retried (--no-retry-failed; see the manifest)"


def _print_failures(s: BatchSummary, stream: TextIO) -> None:
    if s.failed:
        print(f"{s.failed} failed:", file=stream)
    for record in s.failures:
        print(f"  line {record.line} [{record.id}] {_error_text(record)}", file=stream)
    if s.failed > len(s.failures):
        print(f"  ... and {s.failed - len(s.failures)} more (see the manifest)", file=stream)
    if s.failed_earlier:
        print(f"{s.failed_earlier} {_KEPT_FAILED}", file=stream)


def _cost_text(s: BatchSummary) -> str:
    unknown = f" ({s.cost_unknown} items of unknown cost)" if s.cost_unknown else ""
    return f"${s.cost:.4f}{unknown}"


def _print_summary(s: BatchSummary, args: argparse.Namespace, out: TextIO, *, rich: bool) -> None:
    out_dir = Path(args.output)
    rows = [
        ("items run", str(s.done)),
        ("succeeded", str(s.ok)),
        ("failed", str(s.failed)),
        ("failed earlier, not retried", str(s.failed_earlier)),
        ("skipped (already done)", str(s.skipped)),
        ("images saved", str(s.images)),
        ("time", _duration(s.elapsed)),
        ("images/min", f"{s.images_per_minute:.1f}"),
        ("waited on the rate limit", _duration(s.waited)),
        *([("usage tokens (in/out/total)",
            "{input}/{output}/{total}".format(**s.tokens))] if s.tokens["total"] else []),
        ("cost (USD)", _cost_text(s)),
        ("images in", str(out_dir)),
        ("manifest", str(out_dir / "manifest.jsonl")),
    ]
    if rich:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out)
        table = Table(title="asyncimg batch", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        if s.failed:
            failures = Table(title=f"{s.failed} failed", show_lines=False)
            failures.add_column("line", justify="right")
            failures.add_column("id")
            failures.add_column("error")
            for record in s.failures:
                failures.add_row(str(record.line), record.id, _error_text(record))
            console.print(failures)
            if s.failed > len(s.failures):
                console.print(f"... and {s.failed - len(s.failures)} more (see the manifest)")
        if s.failed_earlier:
            console.print(f"{s.failed_earlier} {_KEPT_FAILED}")
        return
    width = max(len(name) for name, _ in rows)
    print("summary:", file=out)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)
    if s.failed or s.failed_earlier:
        _print_failures(s, out)


# -- asyncimg.prepare from the command line (Pillow: the extra asyncimg[images]) -------

_PREPARE_FLAGS = {"image": "IN", "size": "--size", "fit": "--fit", "model": "--for"}


def _prepare_module(flag: str) -> Any:
    try:
        from . import prepare
    except ImportError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return prepare


def _prepare(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    prepare = _prepare_module("prepare")
    source = Path(args.input)
    try:
        if args.for_model is None:
            data = prepare.square_png(source, size=args.size or 1024, fit=args.fit)
            fmt = "png"
        elif args.size is not None:
            raise UsageError("--size: not with --for; the model's rules choose the size")
        else:
            ready = prepare.for_model(args.for_model, source, fit=args.fit)
            data, fmt = ready.image, ready.format
    except ValidationError as exc:
        raise UsageError(f"{_PREPARE_FLAGS.get(exc.param, exc.param)}: {exc}") from None
    target = Path(args.output) if args.output else source.with_name(
        f"{source.stem}-prepared.{EXTENSIONS['image/' + fmt]}"
    )
    if target.resolve() == source.resolve():
        raise UsageError("-o: OUT is IN itself; write the prepared image elsewhere")
    target.write_bytes(data)
    print(target, file=out)
    print(f"prepared: {fmt.upper()}, {len(data)} bytes", file=err)
    return EXIT_OK


def _prepare_inputs(args: argparse.Namespace) -> None:
    """``edit --mask-box`` and ``variation --prepare``: replace the inputs by Pillow's work."""
    box = getattr(args, "mask_box", None)
    if box is not None:
        prepare = _prepare_module("--mask-box")
        from PIL import Image

        try:
            with Image.open(args.image) as image:
                size = image.size
        except OSError as exc:
            raise UsageError(f"IMAGE: cannot read {args.image!r} as an image: {exc}") from None
        try:
            args.mask = ("mask.png", prepare.mask_from_box(size, box))
        except ValidationError as exc:
            raise UsageError(f"--mask-box: {exc}") from None
    if getattr(args, "prepare", False):
        prepare = _prepare_module("--prepare")
        try:
            ready = prepare.for_model(args.model or "dall-e-2", args.image)
        except ValidationError as exc:
            raise UsageError(f"--prepare: {exc}") from None
        args.image = (f"{Path(args.image).stem}.{EXTENSIONS['image/' + ready.format]}",
                      ready.image)


async def _until_sigterm(
    runner: Callable[[argparse.Namespace, TextIO, TextIO], Awaitable[int]],
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run a command; SIGTERM cancels it and makes the status 143 (a batch drains first)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = []

    def on_sigterm() -> None:
        terminated.append(True)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await runner(args, out, err)
    except asyncio.CancelledError:
        if not terminated:
            raise
        print("asyncimg: terminated", file=err)
        return EXIT_SIGTERM
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncimg`` command; returns the exit status (see the module doc)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "serve":
            return serve_from_args(args)
        if args.command == "report":
            return _report(args.directory, thumbnails=args.thumbnails, out=out)
        if args.command == "prepare":
            return _prepare(args, out, err)
        _prepare_inputs(args)
        if args.command == "batch":
            _check_paths(args)
        runner = {"batch": _batch, "batches": _batches}.get(args.command, _single)
        return asyncio.run(_until_sigterm(runner, args, out, err))
    except UsageError as exc:
        print(f"asyncimg: error: {exc}", file=err)
        return EXIT_USAGE
    except ValidationError as exc:  # the client's own arguments, e.g. no API key
        print(f"asyncimg: error: {_flag_message(exc)}", file=err)
        return EXIT_USAGE
    except AsyncImgError as exc:
        print(f"asyncimg: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILED
    except OSError as exc:
        print(f"asyncimg: aborted: {exc}", file=err)
        return EXIT_ABORTED
    except KeyboardInterrupt:
        print("asyncimg: interrupted", file=err)
        return EXIT_SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
