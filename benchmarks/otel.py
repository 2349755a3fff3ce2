"""The cost of OpenTelemetry: client CPU per call without the API, with it and no SDK.

    .venv/bin/python benchmarks/otel.py [--quick]

The fixed-response server (``_server.py``, pinned to CPU 0) answers 256x256
generations; a worker process (``_worker.py``'s measured loop, pinned to CPU 1,
limiter and retries off) makes ``--calls`` calls with 16 in flight, in one of three
modes, alternated round after round so that the machine's drift hits all alike:

- ``absent``: ``import opentelemetry`` is blocked (a ``sys.meta_path`` finder), as
  when the ``otel`` extra is not installed;
- ``api``: opentelemetry-api installed, no SDK configured (its no-op tracer and meter);
- ``sdk``: the SDK configured, spans batched to an exporter that drops them, metrics
  kept by an in-memory reader (for information: what tracing costs when it is on).

The goal: ``api`` within 3 % of ``absent`` (median CPU per call over the rounds).
Each worker checks that it ran in its mode (opentelemetry imported or not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODES = ("absent", "api", "sdk")
GOAL = 0.03


class _Block:
    """A meta path finder that makes ``import opentelemetry`` fail."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"blocked by benchmarks/otel.py: {name}")


def _configure_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def child(mode: str, port: int, calls: int) -> dict[str, Any]:
    """One measured run in ``mode`` (in this process); the worker's figures."""
    if mode == "absent":
        sys.meta_path.insert(0, _Block())  # type: ignore[arg-type]
    elif mode == "sdk":
        _configure_sdk()
    sys.path.insert(0, str(HERE))
    import _worker

    args = argparse.Namespace(
        lib="asyncimg", port=port, size="256x256", concurrency=16, calls=calls,
        time_limit=300.0, profile=None, profile_out=None,
    )
    figures: dict[str, Any] = asyncio.run(_worker.run(args))
    imported = any(m == "opentelemetry" or m.startswith("opentelemetry.") for m in sys.modules)
    if imported != (mode != "absent"):
        raise SystemExit(f"mode {mode}: opentelemetry imported is {imported}")
    figures["mode"] = mode
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_child(mode: str, port: int, calls: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--port", str(port), "--calls", str(calls)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 300 calls")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pin = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if args.child:
        if pin:
            os.sched_setaffinity(0, {1})
        print(json.dumps(child(args.child, args.port, args.calls)), flush=True)
        return 0
    rounds, calls = (3, 300) if args.quick else (args.rounds, args.calls)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_server.py"), "--port", str(port),
         *(["--cpu", "0"] if pin else [])],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the benchmark server did not start")
        per_call: dict[str, list[float]] = {mode: [] for mode in MODES}
        started = time.perf_counter()
        for number in range(rounds):
            order = MODES if number % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                per_call[mode].append(_run_child(mode, port, calls)["cpu_per_call_ms"])
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
    medians = {mode: statistics.median(values) for mode, values in per_call.items()}
    print(f"{rounds} rounds x {calls} calls (256x256, 16 in flight), {elapsed:.0f} s")
    print("mode     CPU per call (ms): median   rounds")
    for mode in MODES:
        values = " ".join(f"{v:.3f}" for v in per_call[mode])
        print(f"{mode:8} {medians[mode]:30.3f}   {values}")
    overhead = medians["api"] / medians["absent"] - 1
    sdk = medians["sdk"] / medians["absent"] - 1
    verdict = "met" if overhead <= GOAL else "MISSED"
    print(f"api, no SDK vs absent: {overhead:+.1%} (goal <= +{GOAL:.0%}: {verdict})")
    print(f"sdk configured vs absent: {sdk:+.1%} (for information)")
    return 0 if overhead <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
