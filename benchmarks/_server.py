"""A fixed-response Images API server for the client benchmarks.

    .venv/bin/python benchmarks/_server.py --port 8931 [--cpu 0]

It answers ``POST /v1/images/generations`` with a precomputed ImagesResponse
(one ``b64_json`` image of the requested ``size``) and an ``x-request-id``
header, and does nothing else, so that the server's own cost is a JSON parse of
the small request and one write of a body built once. It prints ``ready`` on
stdout once it listens. It listens on 127.0.0.1 only.

The images are valid PNGs of the right size whose rows are part noise and part
zeros, so that they compress to a realistic size: about 75 KB (100 KB of base64)
for 256x256 and 1.1 MB (1.5 MB of base64) for 1024x1024, near what DALL-E 2
returns. See :data:`TARGET_PNG_BYTES`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import struct
import sys
import zlib

from aiohttp import web

__all__ = ["TARGET_PNG_BYTES", "make_png", "response_body", "serve"]

TARGET_PNG_BYTES = {256: 75_000, 512: 300_000, 1024: 1_100_000}
"""The PNG size (bytes) aimed at for each square side."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def make_png(side: int, target: int, seed: int = 7) -> bytes:
    """A ``side`` x ``side`` RGB PNG of about ``target`` bytes (noise, then zeros, per row)."""
    rng = random.Random(seed)
    noise = min(side * 3, max(1, target // side))
    pad = bytes(side * 3 - noise)
    raw = b"".join(b"\x00" + rng.randbytes(noise) + pad for _ in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, 6)),
            _chunk(b"IEND", b""),
        )
    )


def response_body(side: int) -> bytes:
    """The JSON body of a successful generation of one ``side`` x ``side`` image."""
    png = make_png(side, TARGET_PNG_BYTES[side])
    payload = {
        "created": 1_700_000_000,
        "data": [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": None}],
    }
    return json.dumps(payload).encode()


def make_app() -> web.Application:
    """The aiohttp application: one route, bodies built once."""
    bodies = {f"{side}x{side}": response_body(side) for side in TARGET_PNG_BYTES}
    ids = itertools.count()

    async def generations(request: web.Request) -> web.Response:
        params = await request.json()
        body = bodies.get(params.get("size") or "1024x1024")
        if body is None:
            return web.json_response(
                {"error": {"message": "unsupported size", "type": "invalid_request_error",
                           "param": "size", "code": None}},
                status=400,
            )
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"x-request-id": f"req_{next(ids):08d}"},
        )

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/v1/images/generations", generations)
    return app


def serve(port: int) -> None:
    """Listen on 127.0.0.1:``port`` until killed; print ``ready`` once listening."""

    async def run() -> None:
        runner = web.AppRunner(make_app(), access_log=None, handle_signals=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
