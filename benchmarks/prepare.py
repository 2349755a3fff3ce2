"""Time and peak memory to prepare a 12 MP JPEG for dall-e-2, against plain Pillow.

The photo is 4000x3000, taken sideways (EXIF orientation 6), photo-like
(gradients and sensor-like noise), JPEG quality 92; it is made once in a
temporary directory. Each way of preparing it runs in a fresh process of its
own, which reads the file's bytes, notes its peak RSS (ru_maxrss), prepares the
image once (the peak counted) and then ``--runs`` more times (the median time).

* ``asyncimg for_model``: ``asyncimg.prepare.for_model("dall-e-2", data)``;
* ``guide recipe``: the API guide's "operate on image data" recipe, as written:
  ``Image.open(...).resize((1024, 1024))`` and ``save(..., format="PNG")``
  (stretched, EXIF ignored, RGB);
* ``careful Pillow``: what a user who knows the rules writes by hand:
  ``exif_transpose``, RGBA, ``ImageOps.pad`` with Lanczos, PNG.

The last column says whether asyncimg's dall-e-2 rules take the result for a
variation (square PNG under 4 MB) and an edit without a mask (transparency).

    .venv/bin/python benchmarks/prepare.py [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _photo(path: Path) -> None:
    from PIL import Image

    width, height = 4000, 3000
    ramp = Image.linear_gradient("L").resize((height, width))
    noise = Image.effect_noise((height, width), 20)
    stored = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), noise))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: stored 3000x4000
    stored.save(path, "JPEG", quality=92, exif=exif)


def _asyncimg(data: bytes) -> bytes:
    from asyncimg.prepare import for_model

    return for_model("dall-e-2", data).image


def _guide(data: bytes) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    width, height = 1024, 1024
    image = image.resize((width, height))
    byte_stream = io.BytesIO()
    image.save(byte_stream, format="PNG")
    return byte_stream.getvalue()


def _careful(data: bytes) -> bytes:
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA")
    square = ImageOps.pad(image, (1024, 1024), Image.Resampling.LANCZOS, color=(0, 0, 0, 0))
    out = io.BytesIO()
    square.save(out, "PNG")
    return out.getvalue()


WAYS: dict[str, Callable[[bytes], bytes]] = {
    "asyncimg for_model": _asyncimg,
    "guide recipe": _guide,
    "careful Pillow": _careful,
}


def _accepted(png: bytes) -> str:
    from asyncimg import ValidationError
    from asyncimg._files import ImageFile
    from asyncimg._params import EditParams, VariationParams

    image = (ImageFile.from_bytes(png),)
    verdicts = []
    for name, build in (
        ("variation", lambda: VariationParams.build(image=image, model="dall-e-2")),
        ("edit", lambda: EditParams.build(image=image, prompt="p", model="dall-e-2")),
    ):
        try:
            build()
            verdicts.append(f"{name} yes")
        except ValidationError:
            verdicts.append(f"{name} no")
    return ", ".join(verdicts)


def _worker(way: str, path: str, runs: int) -> None:
    from PIL import Image

    import asyncimg.prepare  # noqa: F401  (imports are not what is measured)

    data = Path(path).read_bytes()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    out = WAYS[way](data)
    first = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    times = [first]
    for _ in range(runs):
        started = time.perf_counter()
        WAYS[way](data)
        times.append(time.perf_counter() - started)
    picture = Image.open(io.BytesIO(out))
    print(json.dumps({
        "way": way,
        "median_s": round(statistics.median(times), 3),
        "peak_mb": round(peak / 1024, 1),
        "base_mb": round(base / 1024, 1),
        "bytes": len(out),
        "result": f"{picture.width}x{picture.height} {picture.mode}",
        "dall_e_2": _accepted(out),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--worker", nargs=2, metavar=("WAY", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--photo", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    if args.worker:
        _worker(args.worker[0], args.worker[1], args.runs)
        return
    if args.photo:
        _photo(Path(args.photo))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        # In a process of its own: a child's ru_maxrss starts from its parent's at fork.
        subprocess.run([sys.executable, __file__, "--photo", str(path)], check=True)
        print(f"input: 4000x3000 JPEG (EXIF orientation 6), {path.stat().st_size} bytes")
        print(f"{'way':<20} {'median s':>9} {'peak MB':>8} {'bytes':>9}  result         "
              "dall-e-2 takes it for")
        base = None
        for way in WAYS:
            done = subprocess.run(
                [sys.executable, __file__, "--runs", str(args.runs), "--worker", way, str(path)],
                capture_output=True, text=True, check=True,
            )
            r = json.loads(done.stdout)
            base = r["base_mb"]
            print(f"{r['way']:<20} {r['median_s']:>9} {r['peak_mb']:>8} {r['bytes']:>9}  "
                  f"{r['result']:<14} {r['dall_e_2']}")
        print(f"peak MB: the peak RSS while preparing once, above the {base} MB of a process "
              "that has imported Pillow and asyncimg.prepare and read the file")


if __name__ == "__main__":
    main()
