"""OpenTelemetry: spans, metrics and log fields, read with the SDK's in-memory exporter
and metric reader (real components), against the emulator.

The SDK's providers are global and can be set once per process: the first test sets
them (:func:`otel`), every test reads only what its own emulator (its own port) made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from fastapi import FastAPI
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asyncimg import AsyncImagesClient, BadRequestError, RateLimit
from asyncimg._otel import Target
from asyncimg._retry import RetryPolicy
from asyncimg.testing import Emulator, Fault

from .conftest import TEST_KEY

GPT = "gpt-image-1"


@attrs.frozen
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader


_PROVIDERS: list[Otel] = []


@pytest.fixture
def otel() -> Otel:
    """The SDK, set up once for the process, with its finished spans forgotten."""
    if not _PROVIDERS:
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(tracer_provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _PROVIDERS.append(Otel(spans, reader))
    found = _PROVIDERS[0]
    found.spans.clear()
    return found


@pytest.fixture
async def traced(emu: Emulator, otel: Otel) -> AsyncIterator[AsyncImagesClient]:
    """A client on the emulator with a rate limit (so the limiter's figures exist)."""
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(100, 60.0), max_retries=2,
        max_concurrency=7,
    ) as client:
        client.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.004)
        yield client


def finished(otel: Otel) -> Sequence[ReadableSpan]:
    return otel.spans.get_finished_spans()


def points(otel: Otel, name: str, port: int) -> list[tuple[str, dict[str, Any], Any]]:
    """(unit, attributes, point) of metric ``name``'s data points from the server on ``port``."""
    data = otel.reader.get_metrics_data()
    assert data is not None
    found = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.get("server.port", port) == port:
                        found.append((metric.unit, attributes, point))
    return found


def port_of(emu: Emulator) -> int:
    return int(emu.base_url.split(":")[2].split("/")[0])


async def test_a_generation_is_one_client_span_with_the_genai_attributes(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    response = await traced.generate("a lantern", model=GPT, n=2, size="1024x1024")

    (span,) = finished(otel)
    assert span.name == f"generate_content {GPT}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert response.usage is not None
    assert attributes == {
        "gen_ai.operation.name": "generate_content",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": GPT,
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.stream": False,
        "gen_ai.output.type": "image",
        "gen_ai.usage.input_tokens": response.usage.input_tokens,
        "gen_ai.usage.output_tokens": response.usage.output_tokens,
        "server.address": "127.0.0.1",
        "server.port": port_of(emu),
        "http.response.status_code": 200,
        "asyncimg.endpoint": "images.generate",
        "asyncimg.request_id": response.request_id,
        "asyncimg.attempts": 1,
        "asyncimg.limiter.wait": attributes["asyncimg.limiter.wait"],
        "asyncimg.limiter.pauses": 0,
    }
    assert 0.0 <= attributes["asyncimg.limiter.wait"] < 1.0
    assert span.events == ()


async def test_every_kind_of_call_is_one_span(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel, tmp_path: Any
) -> None:
    from asyncimg.testing import make_png

    picture = make_png(256, 256, alpha=True)
    first = await traced.generate("a lantern", model="dall-e-2", size="256x256")
    await traced.edit(picture, "add a moon", model="dall-e-2", size="256x256")
    await traced.create_variation(picture, model="dall-e-2", size="256x256")
    stream = await traced.generate("a kite", model=GPT, stream=True, partial_images=0)
    async with stream:
        async for _event in stream:
            pass
    await traced.download(first.data[0])
    await traced.request("GET", "/files")

    spans = finished(otel)
    summary = [
        (s.name, (s.attributes or {}).get("asyncimg.endpoint"), s.parent is None) for s in spans
    ]
    assert summary == [
        ("generate_content dall-e-2", "images.generate", True),
        ("generate_content dall-e-2", "images.edit", True),
        ("generate_content dall-e-2", "images.create_variation", True),
        (f"generate_content {GPT}", "images.generate", True),
        ("GET", "download", True),
        ("GET", "request", True),
    ]
    assert (spans[3].attributes or {})["gen_ai.request.stream"] is True
    files = dict(spans[5].attributes or {})
    assert files["url.path"] == "/files"
    assert files["http.request.method"] == "GET"
    assert "gen_ai.operation.name" not in files


async def test_a_429_then_200_is_one_span_with_a_retry_event_and_a_pause(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    emu.add_fault(Fault.status(429, retry_after=0.0))
    port = port_of(emu)

    await traced.generate("a lantern", model="dall-e-2", size="256x256")

    (span,) = finished(otel)
    attributes = dict(span.attributes or {})
    assert attributes["asyncimg.attempts"] == 2
    assert attributes["asyncimg.limiter.pauses"] == 1
    assert span.status.status_code is StatusCode.UNSET
    (event,) = span.events
    assert event.name == "asyncimg.retry"
    assert dict(event.attributes or {}) == {
        "asyncimg.attempt": 1,
        "asyncimg.retry.reason": (event.attributes or {})["asyncimg.retry.reason"],
        "asyncimg.retry.wait": (event.attributes or {})["asyncimg.retry.wait"],
        "asyncimg.retry.pause_all": True,
        "error.type": "RateLimitError",
        "http.response.status_code": 429,
    }
    ((unit, _attributes, pauses),) = points(otel, "asyncimg.limiter.pauses", port)
    assert (unit, pauses.value) == ("{pause}", 1)
    ((unit, _attributes, granted),) = points(otel, "asyncimg.limiter.granted", port)
    assert (unit, granted.value) == ("{image}", 2)  # one image per attempt


async def test_a_400_ends_the_span_with_error_and_its_type(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    emu.add_fault(Fault.status(400, message="bad prompt"))

    with pytest.raises(BadRequestError) as raised:
        await traced.generate("a lantern", model="dall-e-2", size="256x256")

    (span,) = finished(otel)
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "BadRequestError"
    assert attributes["http.response.status_code"] == 400
    assert attributes["asyncimg.request_id"] == raised.value.request_id
    assert attributes["asyncimg.attempts"] == 1
    assert [e.name for e in span.events] == ["exception"]
    durations = points(otel, "gen_ai.client.operation.duration", port_of(emu))
    assert [a.get("error.type") for _unit, a, _p in durations] == ["BadRequestError"]


async def test_the_metrics_have_the_conventions_names_and_units(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    port = port_of(emu)
    response = await traced.generate("a lantern", model=GPT, size="1024x1024")
    assert response.usage is not None

    ((unit, attributes, duration),) = points(otel, "gen_ai.client.operation.duration", port)
    assert unit == "s"
    assert duration.count == 1
    assert 0.0 < duration.sum < 10.0
    assert attributes == {
        "gen_ai.operation.name": "generate_content",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": GPT,
        "server.address": "127.0.0.1",
        "server.port": port,
    }
    tokens = {
        a["gen_ai.token.type"]: (unit, p.sum)
        for unit, a, p in points(otel, "gen_ai.client.token.usage", port)
    }
    assert tokens == {
        "input": ("{token}", response.usage.input_tokens),
        "output": ("{token}", response.usage.output_tokens),
    }
    ((unit, _a, wait),) = points(otel, "asyncimg.limiter.wait", port)
    assert (unit, wait.count) == ("s", 1)
    ((unit, _a, granted),) = points(otel, "asyncimg.limiter.granted", port)
    assert (unit, granted.value) == ("{image}", 1)
    ((unit, _a, in_flight),) = points(otel, "asyncimg.limiter.in_flight", port)
    assert (unit, in_flight.value) == ("{request}", 0)
    ((unit, _a, ceiling),) = points(otel, "asyncimg.limiter.ceiling", port)
    assert (unit, ceiling.value) == ("{request}", 7)


async def test_logs_carry_the_request_id_and_the_span_fields(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("asyncimg")
    keep = Keep(logging.DEBUG)
    logger.addHandler(keep)
    try:
        response = await traced.generate("a lantern", model="dall-e-2", size="256x256")
    finally:
        logger.removeHandler(keep)

    (record,) = [r for r in records if getattr(r, "request_id", None) == response.request_id]
    fields = vars(record)
    assert fields["attempt"] == 1
    assert fields["gen_ai.operation.name"] == "generate_content"
    assert fields["gen_ai.request.model"] == "dall-e-2"
    assert fields["server.port"] == port_of(emu)
    (span,) = finished(otel)
    assert (span.attributes or {})["asyncimg.request_id"] == record.request_id  # type: ignore[attr-defined]


async def test_traceparent_goes_on_the_wire_only_when_asked(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    await traced.generate("a lantern", model="dall-e-2", size="256x256")
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, propagate_trace=True
    ) as propagating:
        await propagating.generate("a kite", model="dall-e-2", size="256x256")

    quiet, sent = emu.requests()
    assert "traceparent" not in {name.lower() for name in quiet.headers}
    headers = {name.lower(): value for name, value in sent.headers.items()}
    span = finished(otel)[1]
    context = span.get_span_context()
    assert context is not None
    assert headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )


async def call_asgi(app: Any, method: str, path: str, query: bytes) -> int:
    """Send one request to an ASGI ``app`` as a server would; its status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": [(b"host", b"app")], "server": ("app", 80),
        "client": ("127.0.0.1", 50000),
    }
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": b""}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_a_fastapi_request_span_is_the_parent_of_the_call_span(
    emu: Emulator, traced: AsyncImagesClient, otel: Otel
) -> None:
    app = FastAPI()

    @app.post("/draw")
    async def draw(prompt: str) -> dict[str, str | None]:
        response = await traced.generate(prompt, model="dall-e-2", size="256x256")
        return {"url": response.data[0].url}

    tracer = trace.get_tracer("the-app")

    async def server(scope: Any, receive: Any, send: Any) -> None:
        # What opentelemetry-instrumentation-asgi does: a SERVER span, current meanwhile.
        name = f"{scope['method']} {scope['path']}"
        with tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            await app(scope, receive, send)

    assert await call_asgi(server, "POST", "/draw", b"prompt=a+lantern") == 200

    spans = finished(otel)
    (call,) = [s for s in spans if s.name == "generate_content dall-e-2"]
    # The call's span is a child of the request's SERVER span, or of a span of FastAPI's
    # own inside it (newer FastAPI releases trace themselves, and their request span
    # takes its parent from the request's headers, not from the ASGI wrapper's context).
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    chain = []
    parent = call.parent
    while parent is not None:
        chain.append(by_id[parent.span_id])
        parent = chain[-1].parent
    request = chain[-1]
    assert (request.name, request.kind) == ("POST /draw", SpanKind.SERVER)
    assert {s.name for s in chain[:-1]} <= {"fastapi.endpoint"}
    assert call.context is not None
    assert request.context is not None
    assert call.context.trace_id == request.context.trace_id


_BLOCKED = textwrap.dedent(
    """
    import asyncio, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())

    from asyncimg import AsyncImagesClient
    from asyncimg.testing import Emulator

    async def main():
        async with Emulator(api_key="k") as emu, AsyncImagesClient(
            api_key="k", base_url=emu.base_url, propagate_trace=True
        ) as client:
            r = await client.generate("a lantern", model="dall-e-2", size="256x256")
            await client.download(r.data[0])
            (seen,) = [e for e in emu.requests() if e.path.endswith("/generations")]
            assert "traceparent" not in {n.lower() for n in seen.headers}

    asyncio.run(main())
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """
)


@pytest.mark.subprocess
def test_without_opentelemetry_calls_work_and_import_nothing_of_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m asyncimg`` without blocking the loop; its status and stderr."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncimg", *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, err.decode()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OTEL_"))}
    env.update(extra)
    return env


@pytest.mark.subprocess
async def test_the_batch_cli_sends_spans_and_metrics_by_otlp_with_otel(
    tmp_path: Path,
) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}

    async def collect(request: web.Request) -> web.Response:
        received[request.path].append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    app.router.add_post("/v1/metrics", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lantern\na kite\na moon\n")
    try:
        status, err = await run_cli(
            "batch", str(prompts), "-o", str(tmp_path / "out"), "--emulator", "--model",
            "dall-e-2", "--size", "256x256", "-q", "--otel",
            env=cli_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                OTEL_SERVICE_NAME="nightly-batch",
            ),
        )
    finally:
        await runner.cleanup()
    assert status == 0, err

    names, services = [], set()
    for body in received["/v1/traces"]:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            services |= {a.value.string_value for a in resource.resource.attributes
                         if a.key == "service.name"}
            names += [s.name for scope in resource.scope_spans for s in scope.spans]
    assert names.count("generate_content dall-e-2") == 3
    assert services == {"nightly-batch"}
    metric_names = set()
    for body in received["/v1/metrics"]:
        export = ExportMetricsServiceRequest.FromString(body)
        metric_names |= {
            m.name for r in export.resource_metrics for s in r.scope_metrics for m in s.metrics
        }
    assert {"gen_ai.client.operation.duration", "asyncimg.limiter.granted"} <= metric_names


@pytest.mark.subprocess
async def test_otel_without_the_sdk_is_a_usage_error(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lantern\n")
    # sitecustomize on the path hides the SDK: `import opentelemetry.sdk` fails there.
    hide = tmp_path / "hide"
    hide.mkdir()
    blocker = hide / "sitecustomize.py"
    blocker.write_text(textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry.sdk":
                    raise ImportError("blocked")
                return None

        sys.meta_path.insert(0, Block())
        """
    ))
    status, err = await run_cli(
        "batch", str(prompts), "-o", str(tmp_path / "out"), "--emulator", "--otel",
        env=cli_env(PYTHONPATH=str(hide)),
    )
    assert status == 2
    assert "--otel needs opentelemetry-sdk" in err
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.parametrize(
    ("base_url", "provider", "address", "port"),
    [
        ("https://api.openai.com/v1", "openai", "api.openai.com", 443),
        ("http://127.0.0.1:8089/v1", "openai", "127.0.0.1", 8089),
        ("https://acme.openai.azure.com/openai/deployments/images", "azure.ai.openai",
         "acme.openai.azure.com", 443),
        ("https://GW.example/openai/deployments/{model}", "azure.ai.openai", "gw.example", 443),
    ],
)
def test_the_target_names_the_provider_and_the_server(
    base_url: str, provider: str, address: str, port: int
) -> None:
    assert Target.of(base_url).attributes == {
        "gen_ai.provider.name": provider, "server.address": address, "server.port": port,
    }


async def test_a_redis_limiters_round_trips_are_counted(emu: Emulator, otel: Otel) -> None:
    from asyncimg import RedisLimiter

    from ._redis_server import running_redis

    pytest.importorskip("redis.asyncio")
    name = "otel-" + uuid.uuid4().hex[:8]
    with running_redis() as server:
        limiter = RedisLimiter.from_url(server.url, rate=RateLimit(50, 60.0), name=name)
        async with limiter, AsyncImagesClient(
            api_key=TEST_KEY, base_url=emu.base_url, limiter=limiter
        ) as client:
            await client.generate("a lantern", model="dall-e-2", size="256x256")
            ((unit, _a, trips),) = [
                (unit, a, p) for unit, a, p in points(otel, "asyncimg.limiter.redis.round_trips", 0)
                if a.get("asyncimg.limiter.name") == name
            ]
            assert unit == "{round_trip}"
            assert trips.value == limiter.round_trips >= 1
