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
3    stopped by a fatal error, which would fail every item (401 key refused,
     403 permission denied, 404 model or URL not found, 429 quota or billing
     limit, --redis out of reach, the server unreachable: 5 items in a row
     without an answer): nothing new was sent after it
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
it is imported only then. Without rich (installed without the ``cli`` extra) the
progress is plain lines there too, and a line says once how to get the bar.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import functools
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._batch import ProgressSink, fatal_error
from ._exceptions import APIError, AsyncImgError, LimiterUnavailableError, ValidationError
from ._files import EXTENSIONS
from ._fs import write_atomic
from ._keywords import EDIT_KEYWORDS, GENERATE_KEYWORDS, OPTIONS, VARIATION_KEYWORDS
from ._limiter import Limiter, RateLimit
from ._version import __version__
from .testing._serve import add_serve_options, positive_int, serve_from_args

if TYPE_CHECKING:
    from ._batch import BatchControl, BatchSummary, Record
    from ._batch.input import Shard
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
    "3 stopped by a fatal error (401, 403, 404, 429 quota, --redis out of reach, the server "
    "unreachable), "
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


_DEFAULT_LIMIT_NAME = "openai-images"


def _endpoint_options(g: argparse._ArgumentGroup) -> None:
    """Where requests go and how each is tried: every command that talks to a server."""
    g.add_argument("--base-url", help="the API's base URL (default $OPENAI_BASE_URL or OpenAI)")
    g.add_argument("--max-retries", type=int, default=3, help="retries per request")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds for one attempt")


def _server_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _endpoint_options(common.add_argument_group("connection"))
    return common


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    _endpoint_options(g)
    azure = common.add_argument_group("Azure OpenAI (the official SDK's environment variables)")
    azure.add_argument(
        "--azure-endpoint", metavar="URL",
        help="an Azure OpenAI resource, https://NAME.openai.azure.com (default "
        "$AZURE_OPENAI_ENDPOINT, used when OPENAI_API_KEY is not set); the key comes from "
        "$AZURE_OPENAI_API_KEY",
    )
    azure.add_argument(
        "--api-version", metavar="VERSION",
        help="with Azure: the api-version, e.g. 2025-04-01-preview (default $OPENAI_API_VERSION)",
    )
    azure.add_argument(
        "--deployment", metavar="NAME",
        help="with Azure: the deployment to call (default: --model names it)",
    )
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
        "--limit-name", metavar="NAME",
        help="which shared budget (with --redis): one per organization and model family "
        f"(default: {_DEFAULT_LIMIT_NAME})",
    )
    g.add_argument(
        "--concurrency", type=positive_int, default=None,
        help="a hard ceiling on requests in flight (default: sized from --rate and the "
        "answer times, 16 to 512)",
    )
    g.add_argument(
        "--emulator", action="store_true",
        help="run against an emulator started in this process (no key needed)",
    )
    g.add_argument(
        "--emulator-latency", type=float, default=0.0, metavar="S",
        help="the emulator's answer delay in seconds (with --emulator)",
    )
    return common


class _SvgPart(argparse.Action):
    """``--svg-model``/``--svg-effort``: one part each of the ``svg`` parameter."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        svg = dict(getattr(namespace, "svg", None) or {})
        if option_string == "--svg-effort":
            svg["reasoning"] = {"effort": values}
        else:
            svg["model"] = values
        namespace.svg = svg


def _image_options(*, style: bool = True, gpt: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("image parameters (left out: the server's default)")
    g.add_argument(
        "--model", help="gpt-image-2.5-sunburst, gpt-image-2.5-flare, gpt-image-1.5, ..."
    )
    g.add_argument("-n", type=int, dest="n", help="images per prompt")
    g.add_argument("--size", help="e.g. 1024x1024, 256x256, auto")
    g.add_argument(
        "--format", dest="response_format", choices=("url", "b64_json"),
        help="response_format (dall-e models)",
    )
    g.add_argument("--user", help="an end-user id for abuse monitoring (deprecated by the API)")
    if gpt:
        g.add_argument(
            "--safety-identifier", help="a stable, hashed id of your end user (replaces --user)"
        )
        g.add_argument(
            "--quality", help="low, medium, high, auto; xhigh, max (GPT Image 2.5); standard, hd"
        )
        g.add_argument("--complexity", choices=("low", "medium", "high"),
                       help="effort spent planning the image, apart from --quality")
        g.add_argument("--output-format", choices=("png", "jpeg", "webp", "gif", "svg"))
        g.add_argument("--output-compression", type=int, metavar="0-100")
        g.add_argument("--background", choices=("transparent", "opaque", "auto"))
        g.add_argument("--frame-count", type=int, metavar="2-16",
                       help="frames of a GIF (--output-format gif; default 9)")
        g.add_argument("--frame-duration-ms", type=int, metavar="MS",
                       help="milliseconds per GIF frame (default 200)")
        g.add_argument("--svg-model", dest="svg", action=_SvgPart, metavar="MODEL",
                       help="the model that writes an SVG (--output-format svg)")
        g.add_argument("--svg-effort", dest="svg", action=_SvgPart, metavar="EFFORT",
                       help="the SVG author's reasoning effort (none ... max)")
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
    shards = batch.add_argument_group(
        "many machines",
        "run one input on N processes or machines, each with its own manifest in DIR "
        "(manifest-KofN.jsonl); with --redis they share one budget, and `asyncimg report` "
        "reads all shards as one job",
    )
    shards.add_argument(
        "--shard", metavar="K/N",
        help="run only shard K of N (K from 1 to N): the items whose id hashes to it, the "
        "same on every machine and every run",
    )
    shards.add_argument(
        "--shard-from-env", nargs="?", const=0, type=int, metavar="N",
        help="take K from the job array: $JOB_COMPLETION_INDEX (Kubernetes Indexed Job, "
        "0-based; give N, the Job's completions) or $SLURM_ARRAY_TASK_ID (counted from "
        "$SLURM_ARRAY_TASK_MIN; N defaults to $SLURM_ARRAY_TASK_COUNT); task 0 is shard 1/N",
    )
    batch.add_argument(
        "--otel", action="store_true",
        help="send traces and metrics by OTLP, configured by the standard OTEL_* variables "
        "(needs opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http)",
    )
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
        "generate", parents=[_image_options(), conn], help="generate images for one prompt",
        description="Generate images for PROMPT and write them into DIR (default: the "
        "current directory); prints each file written. The options are checked before "
        "anything is sent.",
        epilog=_EXIT_HELP,
    )
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument("-o", "--output", default=".", metavar="DIR", help="default: .")
    _stream_options(generate)

    edit = sub.add_parser(
        "edit", parents=[_image_options(style=False), conn], help="edit an image",
        description="Edit IMAGE as PROMPT says (where --mask or --mask-box is transparent, "
        "or all of it) and write the results into DIR; prints each file written.",
        epilog=_EXIT_HELP,
    )
    edit.add_argument("image", metavar="IMAGE", help="the image to edit (a PNG for dall-e-2)")
    edit.add_argument("prompt", metavar="PROMPT")
    masks = edit.add_mutually_exclusive_group()
    masks.add_argument("--mask", metavar="M", help="a PNG whose transparent areas mark the edit")
    masks.add_argument(
        "--mask-box", type=_box_arg, metavar="X0,Y0,X1,Y1",
        help="edit this box of the image (pixels; x1, y1 excluded); needs asyncimg[images]",
    )
    masks.add_argument(
        "--markup", metavar="M",
        help="a transparent PNG drawn over the image to guide the edit (GPT Image 2.5)",
    )
    edit.add_argument("--input-fidelity", choices=("high", "low"))
    edit.add_argument("-o", "--output", default=".", metavar="DIR", help="default: .")
    _stream_options(edit)

    variation = sub.add_parser(
        "variation", parents=[_image_options(style=False, gpt=False), conn],
        help="create variations of an image (dall-e-2)",
        description="Create variations of IMAGE (a square PNG under 4 MB for dall-e-2; "
        "--prepare makes one from any picture) and write them into DIR; prints each file "
        "written.",
        epilog=_EXIT_HELP,
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
        "--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)"
    )
    prepare.add_argument(
        "--size", type=positive_int, help="the square's edge in pixels, at most 4096 (default "
        "1024; not with --for, whose rules choose it)",
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
        one = batches_sub.add_parser(action, parents=[_server_options()], help=text)
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


_AZURE_FLAGS = {
    "endpoint": "--azure-endpoint", "api_version": "--api-version", "deployment": "--deployment",
}


def _wants_azure(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """Azure when a flag of its own is given, or ``$AZURE_OPENAI_ENDPOINT`` is set while
    neither ``$OPENAI_API_KEY``, ``--base-url`` nor ``--emulator`` says otherwise.

    Raises:
        UsageError: an Azure flag together with ``--base-url`` or ``--emulator``.
    """
    if not hasattr(args, "azure_endpoint"):  # `batches`: the Batch API is OpenAI's
        return False
    flags = [flag for name, flag in (("azure_endpoint", "--azure-endpoint"),
                                     ("api_version", "--api-version"),
                                     ("deployment", "--deployment"))
             if getattr(args, name, None) is not None]
    other = "--emulator" if getattr(args, "emulator", False) else (
        "--base-url" if args.base_url else None
    )
    if flags and other:
        raise UsageError(f"{flags[0]}: not with {other} (Azure has its own endpoint)")
    if flags:
        return True
    return other is None and bool(environ.get("AZURE_OPENAI_ENDPOINT")) and not environ.get(
        "OPENAI_API_KEY"
    )


def _azure_client(args: argparse.Namespace, options: dict[str, Any]) -> AsyncImagesClient:
    """``AsyncImagesClient.azure`` from the flags and the SDK's environment variables.

    Raises:
        UsageError: the endpoint, the api version or the key is missing or wrong.
    """
    from ._client import AsyncImagesClient

    try:
        return AsyncImagesClient.azure(
            endpoint=args.azure_endpoint, deployment=args.deployment,
            api_version=args.api_version, **options,
        )
    except ValidationError as exc:
        if exc.param == "api_key":
            raise UsageError(
                "no Azure key: set AZURE_OPENAI_API_KEY (Azure takes no OPENAI_API_KEY)"
            ) from None
        flag = _AZURE_FLAGS.get(exc.param)
        if flag is None:
            raise
        env = {"endpoint": " or set AZURE_OPENAI_ENDPOINT",
               "api_version": " or set OPENAI_API_VERSION"}.get(exc.param, "")
        raise UsageError(f"{flag}: {exc.message} (give {flag}{env})") from None


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[AsyncImagesClient]:
    from ._client import AsyncImagesClient

    async with contextlib.AsyncExitStack() as stack:
        options: dict[str, Any] = {
            "max_retries": args.max_retries, "timeout": args.timeout,
            "max_concurrency": getattr(args, "concurrency", None),
        }
        rate = getattr(args, "rate", None)
        if getattr(args, "redis", None):
            shared = _redis_limiter(args)
            _quiet_limiter_log()
            stack.push_async_callback(shared.aclose)
            options["limiter"] = shared
        else:
            options["limiter"] = Limiter(rate)
        if _wants_azure(args, os.environ):
            if getattr(args, "via", None) == "batch-api":
                raise UsageError("--via batch-api: not with Azure (its Batch API differs)")
            client = _azure_client(args, options)
        else:
            base_url = args.base_url
            api_key = None
            if getattr(args, "emulator", False):
                from .testing import Emulator

                emu = await stack.enter_async_context(
                    Emulator(latency=args.emulator_latency)
                )
                base_url, api_key = emu.base_url, _EMULATOR_KEY
            client = AsyncImagesClient(api_key=api_key, base_url=base_url, **options)
        yield await stack.enter_async_context(client)


class _ReportedByTheCommand(logging.Filter):
    """Drops the shared limiter's log line about Redis out of reach: the command says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, LimiterUnavailableError) for arg in args)


def _quiet_limiter_log() -> None:
    """Install :class:`_ReportedByTheCommand` on the ``asyncimg`` logger (once)."""
    logger = logging.getLogger("asyncimg")
    if not any(isinstance(f, _ReportedByTheCommand) for f in logger.filters):
        logger.addFilter(_ReportedByTheCommand())


def _redis_limiter(args: argparse.Namespace) -> RedisLimiter:
    """The shared limiter of ``--redis`` and ``--limit-name``; UsageError when unusable."""
    if args.rate is None:
        raise UsageError("--redis: a shared limit needs a --rate (not off)")
    from ._redis import RedisLimiter, check_name

    name = args.limit_name or _DEFAULT_LIMIT_NAME
    try:
        check_name(name)
    except ValueError as exc:
        raise UsageError(f"--limit-name: {exc}") from None
    try:
        return RedisLimiter.from_url(args.redis, rate=args.rate, name=name)
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
            print(f"asyncimg: error: {_flag_message(exc)}{_prepare_hint(args, exc)}", file=err)
            return EXIT_USAGE
        except LimiterUnavailableError as exc:
            print(f"asyncimg: stopped: {fatal_error(exc)}; nothing was sent", file=err)
            return EXIT_FATAL
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


def _prepare_hint(args: argparse.Namespace, exc: ValidationError) -> str:
    """For ``variation``: a picture the model refuses could be made ready by ``--prepare``."""
    if args.command != "variation" or args.prepare or not exc.param.startswith("image"):
        return ""
    if not isinstance(args.image, str) or not Path(args.image).is_file():
        return ""
    return "; --prepare makes one from it (needs asyncimg[images])"


def _check_output(out: Path) -> None:
    """A usage error when ``-o DIR`` cannot hold the images: checked before anything is sent.

    Raises:
        UsageError: ``out`` is a file, or cannot be created or written.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o: {out} is a file; give a directory for the images")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"-o: cannot create {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"-o: cannot create or write {out}: {existing} is not writable")


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
    _check_output(Path(args.output))
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


def _shard(args: argparse.Namespace) -> Shard | None:
    """The shard of ``--shard K/N`` or ``--shard-from-env [N]``; None for neither."""
    from ._batch.input import Shard, shard_from_env

    if args.shard is not None and args.shard_from_env is not None:
        raise UsageError("--shard and --shard-from-env: give one")
    try:
        if args.shard is not None:
            return Shard.parse(args.shard)
        if args.shard_from_env is not None:
            return shard_from_env(os.environ, args.shard_from_env or None)
    except ValueError as exc:
        flag = "--shard" if args.shard is not None else "--shard-from-env"
        raise UsageError(f"{flag}: {exc}") from None
    return None


async def _batch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._batch import BatchControl, InputError, detect_format, open_text, plan_batch, run_batch
    from ._cost import Budget

    shard = _shard(args)
    if shard is not None and args.via == "batch-api":
        raise UsageError("--shard: the Batch API route runs a whole input; use --via direct")
    fmt = detect_format(args.prompts, args.input_format)
    prices = _prices(args)
    if args.dry_run:
        try:
            plan = plan_batch(
                open_text(args.prompts, args.encoding), fmt, args.output, params=_params(args),
                prices=prices, rate=args.rate, batch_api=args.via == "batch-api", shard=shard,
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
        progress = _progress_for(err)
    control = BatchControl()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if control.signal is None:
            control.interrupt(signum)
            waiting = control.in_flight
            text = "asyncimg: stopping: nothing new is sent" + (
                f"; waiting for {_count(waiting, 'request')} in flight (again to cancel them)"
                if waiting else ""
            )
            if progress is not None:
                progress.message(text)  # a line of its own, never glued to the bar
            else:
                print(text, file=err, flush=True)
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
                    run_batch, count_first=args.prompts != "-", prices=prices, budget=budget,
                    shard=shard,
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


def _count(n: int, noun: str) -> str:
    """``1 item``, ``2 items``: a count with its noun, singular for one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _Countdown:
    """An ETA that ticks down between estimates (rich and tqdm users expect it to move).

    Each finished item gives a fresh estimate; in between, the time shown falls with
    the clock, and never below zero.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._eta: float | None = None
        self._at = 0.0

    def anchor(self, eta: float | None) -> None:
        """A fresh estimate (seconds left, or None when unknown)."""
        self._eta, self._at = eta, self._clock()

    def left(self) -> float | None:
        """Seconds left now: the last estimate less the time since."""
        if self._eta is None:
            return None
        return max(0.0, self._eta - (self._clock() - self._at))


class _Plain(ProgressSink):
    """Progress as plain lines: one per finished item, and a status line every 10 s.

    Every line stands alone: elapsed time, what is left, a ticking ETA, and only
    the figures that mean something for the route (no images/min or rate-limit
    wait for the Batch API, whose pace is the API's).
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self._clock = clock
        self._last = clock()
        self._last_batch: str | None = None
        self._gone = False
        self._eta = _Countdown(clock)

    def _say(self, line: str) -> None:
        """Print a line; a closed stream (``2>&1 | head``) silences progress, not the batch."""
        if self._gone:
            return
        try:
            print(line, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):
            self._gone = True

    def message(self, text: str) -> None:
        """A message of its own, on a line of its own (a Ctrl-C notice)."""
        self._say(text)

    def _eta_text(self, s: BatchSummary) -> str | None:
        if s.total is None or s.stopped is not None or s.route != "direct":
            return None
        left = self._eta.left()
        return "?" if left is None else _duration(left)

    def _fields(self, s: BatchSummary) -> list[str]:
        """The status figures, in the order shown."""
        fields = [f"{s.failed} failed"]
        if s.total is not None:
            fields.append(f"{max(0, s.total - s.done)} left")
        fields.append(f"elapsed {_duration(self._clock() - s.started)}")
        if s.route == "direct":
            fields.append(f"{s.images_per_minute:.1f} images/min")
            fields.append(f"waited {_duration(s.waited)} on the rate limit")
        eta = self._eta_text(s)
        if eta is not None:
            fields.append(f"ETA {eta}")
        return fields

    def _status(self, s: BatchSummary) -> str:
        total = "?" if s.total is None else str(s.total)
        return f"{s.done}/{total} done, " + ", ".join(self._fields(s))

    def start(self, s: BatchSummary) -> None:
        skipped = f" ({s.skipped} already done)" if s.skipped else ""
        what = ("reading prompts from stdin" if s.total is None
                else f"{_count(s.total, 'item')} to run")
        self._say(f"batch: {what}{skipped}")
        self._eta.anchor(s.eta)

    def item(self, record: Record, s: BatchSummary) -> None:
        self._eta.anchor(s.eta)
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
        now = self._clock()
        if now - self._last >= 10.0:
            self._last = now
            self._say(self._status(s))

    def stop(self, s: BatchSummary) -> None:
        self._say(self._status(s))


class _Rich(_Plain):
    """A rich progress bar on a terminal: bar, done/total, failed, left, elapsed, ETA."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=stream)
        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("batch", total=None, status="", eta="")

    def _update(self, s: BatchSummary, advance: int = 0) -> None:
        status = [f"[red]{s.failed} failed[/red]"]
        if s.total is not None:
            status.append(f"{max(0, s.total - s.done)} left")
        if s.route == "direct":
            status.append(f"{s.images_per_minute:.1f} img/min")
            status.append(f"rate wait {_duration(s.waited)}")
        eta = self._eta_text(s)
        self.progress.update(
            self.task, total=s.total, advance=advance, status=" • ".join(status),
            eta="" if eta is None else f"ETA {eta}",
        )

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def start(self, s: BatchSummary) -> None:
        if s.skipped:
            self.console.print(f"{_count(s.skipped, 'item')} already done, skipped")
        self._eta.anchor(s.eta)
        self._update(s)
        self.progress.start()

    def item(self, record: Record, s: BatchSummary) -> None:
        self._eta.anchor(s.eta)
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


_RICHER = "asyncimg: plain progress; pip install 'asyncimg[cli]' gives a progress bar"


def _progress_for(stream: TextIO) -> _Plain:
    """rich's bar on a terminal, when rich (the ``cli`` extra) is installed; plain lines
    otherwise (said once, on a terminal, with how to get the bar)."""
    if not _isatty(stream):
        return _Plain(stream)
    try:
        return _Rich(stream)
    except ImportError:
        plain = _Plain(stream)
        plain._say(_RICHER)
        return plain


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


def _shards_rows(out_dir: Path, shard: Shard | None) -> list[tuple[str, str]]:
    """A shard's summary rows about the whole job: what every shard of DIR has done."""
    if shard is None:
        return []
    from ._batch import InputError
    from ._batch.manifest import read_records

    try:
        records = read_records(out_dir)
    except (InputError, OSError):
        return [("shard", f"{shard.index} of {shard.count}")]
    ok = sum(r.ok for r in records)
    return [
        ("shard", f"{shard.index} of {shard.count}"),
        ("all shards of DIR", f"{ok} succeeded, {len(records) - ok} failed"),
    ]


def _print_summary(s: BatchSummary, args: argparse.Namespace, out: TextIO, *, rich: bool) -> None:
    from ._batch.manifest import manifest_path

    out_dir = Path(args.output)
    shard = _shard(args)
    left = max(0, s.total - s.done) if s.total is not None else 0
    direct = s.route == "direct"
    rows = [
        ("items run", str(s.done)),
        ("succeeded", str(s.ok)),
        ("failed", str(s.failed)),
        *([("left (rerun to resume)", str(left))] if left else []),
        ("failed earlier, not retried", str(s.failed_earlier)),
        ("skipped (already done)", str(s.skipped)),
        ("images saved", str(s.images)),
        ("time", _duration(s.elapsed)),
        *([("images/min", f"{s.images_per_minute:.1f}"),
           ("waited on the rate limit", _duration(s.waited))] if direct else []),
        *([("usage tokens (in/out/total)",
            "{input}/{output}/{total}".format(**s.tokens))] if s.tokens["total"] else []),
        ("cost (USD)", _cost_text(s)),
        ("images in", str(out_dir)),
        ("manifest", str(manifest_path(out_dir, shard))),
        *_shards_rows(out_dir, shard),
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

_IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
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
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise UsageError(f"-o: {args.output} exists; give another OUT, or --overwrite")
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
    named = _IMAGE_SUFFIXES.get(target.suffix.lower())
    if named is not None and named != fmt:
        raise UsageError(
            f"-o: {target} names a {named.upper()} file, but the prepared image is a "
            f"{fmt.upper()}; name it {target.stem}.{EXTENSIONS['image/' + fmt]}"
        )
    if target.exists() and not args.overwrite:
        raise UsageError(f"-o: {target} exists; give another OUT, or --overwrite")
    write_atomic(target, data)
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
        if getattr(args, "limit_name", None) is not None and not args.redis:
            raise UsageError("--limit-name: only with --redis (or $ASYNCIMG_REDIS_URL)")
        _prepare_inputs(args)
        if args.command == "batch":
            _check_paths(args)
        elif args.command in _PARAM_NAMES:
            _check_output(Path(args.output))
        elif args.command == "batches" and not Path(args.output).is_dir():
            raise UsageError(f"DIR: no such directory: {args.output}")
        runner = {"batch": _batch, "batches": _batches}.get(args.command, _single)
        if not getattr(args, "otel", False):
            return asyncio.run(_until_sigterm(runner, args, out, err))
        from ._otel import ExporterUnavailable, export_otlp

        try:
            shutdown = export_otlp("asyncimg-batch")
        except ExporterUnavailable as exc:
            raise UsageError(str(exc)) from None
        try:
            return asyncio.run(_until_sigterm(runner, args, out, err))
        finally:
            shutdown()  # the last spans and metrics go out
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
