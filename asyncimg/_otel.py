"""OpenTelemetry: one span per call, the GenAI client metrics and the limiter's own.

Only ``opentelemetry-api`` is used (the ``asyncimg[otel]`` extra), and only when it
is importable: it is imported on the first call, never by ``import asyncimg``, and
when it is absent every function here returns at once. The application configures
an SDK (or not: the API's no-op tracer and meter then cost a few microseconds a
call, ``benchmarks/otel.py``).

Names follow the GenAI semantic conventions (``gen_ai.*``, ``server.*``,
``error.type``). They define no image operation: an image call is a
``generate_content`` (the conventions' well-known value for a multimodal
generation), with ``gen_ai.output.type = image`` saying what it makes, so
GenAI-aware backends, which key their views on the well-known values, show image
calls beside chat calls with their token usage; ``asyncimg.endpoint`` tells a
generation, an edit and a variation apart. A download or a Files/Batches request
is an HTTP client span named after its method, as the HTTP conventions name them.
asyncimg's own figures are under ``asyncimg.``.

The client calls :func:`start` when a call begins (the span becomes current, so
the call is a child of the application's span and an HTTP instrumentation's spans
children of the call), :meth:`CallSpan.retry` per retry (an event on the span), and
:meth:`CallSpan.succeeded` or :meth:`CallSpan.failed` at the end; the figures come
from the call's :class:`CallStats`.
"""

from __future__ import annotations

import importlib
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs

from ._callstats import CallStats

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span

    from ._gate import Gate
    from ._limiter import RateLimiter

__all__ = [
    "IMAGE_OPERATION",
    "CallInfo",
    "CallSpan",
    "ExporterUnavailable",
    "Target",
    "export_otlp",
    "log_fields",
    "start",
    "trace_headers",
    "watch",
]

IMAGE_OPERATION: Final = "generate_content"
"""``gen_ai.operation.name`` of generations, edits and variations (see the module)."""

SCOPE: Final = "asyncimg"

_ENDPOINTS: Final = {
    "/images/generations": "images.generate",
    "/images/edits": "images.edit",
    "/images/variations": "images.create_variation",
}

# The conventions' advised bucket boundaries for the two GenAI client histograms.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))  # 1, 4, 16, ... 67108864
WAIT_BUCKETS: Final = (0.0, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@attrs.frozen
class Target:
    """Where a client's requests go: ``gen_ai.provider.name``, ``server.address``/``port``."""

    provider: str
    address: str
    port: int | None
    attributes: dict[str, Any] = attrs.field(init=False, eq=False, repr=False)
    """The target as span and metric attributes (made once; read only)."""

    def __attrs_post_init__(self) -> None:
        found: dict[str, Any] = {
            "gen_ai.provider.name": self.provider,
            "server.address": self.address,
        }
        if self.port is not None:
            found["server.port"] = self.port
        object.__setattr__(self, "attributes", found)

    @classmethod
    def of(cls, base_url: str) -> Target:
        """The target of a client with ``base_url`` (Azure: ``/openai/deployments/`` or
        an ``*.azure.com`` host gives ``azure.ai.openai``, anything else ``openai``)."""
        parts = urlsplit(base_url)
        host = (parts.hostname or "").lower()
        azure = "/openai/deployments/" in parts.path or host.endswith(".azure.com")
        try:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            port = None
        return cls("azure.ai.openai" if azure else "openai", host, port)


@attrs.frozen
class CallInfo:
    """What a call is, for its span, its metrics and its log records.

    ``operation`` is the GenAI operation (None: a plain HTTP request, a download
    or a Files/Batches request).
    """

    target: Target
    endpoint: str
    method: str = "POST"
    operation: str | None = None
    model: str | None = None
    choices: int | None = None
    stream: bool = False
    path: str | None = None

    @classmethod
    def image(
        cls, target: Target, path: str, model: str | None, n: int | None, stream: bool | None
    ) -> CallInfo:
        """An image call to ``path`` (``/images/generations``, ``/images/edits`` or
        ``/images/variations``)."""
        endpoint = _ENDPOINTS.get(path, path)
        return cls(target, endpoint, "POST", IMAGE_OPERATION, model, n, bool(stream))

    @classmethod
    def http(cls, target: Target, endpoint: str, method: str, path: str) -> CallInfo:
        """A request that is no GenAI operation (``endpoint``: ``download`` or
        ``request``) of ``method`` to ``path`` (``url.path``)."""
        return cls(target, endpoint, method.upper(), path=path)

    @property
    def span_name(self) -> str:
        """``{operation} {model}`` (GenAI), else the HTTP method."""
        if self.operation is None:
            return self.method
        return f"{self.operation} {self.model}" if self.model else self.operation

    def attributes(self) -> dict[str, Any]:
        """The attributes known when the call begins."""
        found = dict(self.target.attributes)
        found["asyncimg.endpoint"] = self.endpoint
        if self.operation is None:
            found["http.request.method"] = self.method
            if self.path is not None:
                found["url.path"] = self.path
            return found
        found["gen_ai.operation.name"] = self.operation
        found["gen_ai.output.type"] = "image"
        found["gen_ai.request.stream"] = self.stream
        if self.model is not None:
            found["gen_ai.request.model"] = self.model
        if self.choices is not None:
            found["gen_ai.request.choice.count"] = self.choices
        return found

    def metric_attributes(self) -> dict[str, Any]:
        """The attributes of the GenAI metrics: the target, the operation, the model."""
        found = dict(self.target.attributes)
        if self.operation is not None:
            found["gen_ai.operation.name"] = self.operation
        if self.model is not None:
            found["gen_ai.request.model"] = self.model
        return found


def log_fields(call: CallInfo | None, request_id: str | None, attempt: int) -> dict[str, Any]:
    """The ``extra=`` of the client's log records: the request id, the attempt and the
    call's attributes (the span's names), so that logs and traces correlate."""
    fields: dict[str, Any] = {"request_id": request_id, "attempt": attempt}
    if call is not None:
        fields.update(call.attributes())
    return fields


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception's class name (``RateLimitError``, ``APITimeoutError``)."""
    return type(exc).__qualname__


# -- the instruments, made on first use -------------------------------------------------


class _Instruments:
    """The tracer, the meter's instruments and the API's functions, got once."""

    def __init__(self) -> None:
        from opentelemetry import context, metrics, propagate, trace

        self.context = context
        self.propagate = propagate
        self.trace = trace
        self.client_kind = trace.SpanKind.CLIENT
        self.error = trace.StatusCode.ERROR
        self.tracer = trace.get_tracer(SCOPE, _version())
        meter = metrics.get_meter(SCOPE, _version())
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.wait = meter.create_histogram(
            "asyncimg.limiter.wait",
            unit="s",
            description="Time a call waited for the rate limiter, over its attempts",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        self.granted = meter.create_counter(
            "asyncimg.limiter.granted",
            unit="{image}",
            description="Images granted by the rate limiter (one grant per attempt)",
        )
        self.pauses = meter.create_counter(
            "asyncimg.limiter.pauses",
            unit="{pause}",
            description="429 answers whose wait paused the rate limiter for every caller",
        )
        meter.create_observable_gauge(
            "asyncimg.limiter.in_flight",
            callbacks=[_in_flight],
            unit="{request}",
            description="Image requests holding a concurrency slot",
        )
        meter.create_observable_gauge(
            "asyncimg.limiter.ceiling",
            callbacks=[_ceiling],
            unit="{request}",
            description="The concurrency ceiling: the most image requests in flight",
        )
        meter.create_observable_counter(
            "asyncimg.limiter.redis.round_trips",
            callbacks=[_round_trips],
            unit="{round_trip}",
            description="Redis round trips of the shared limiters (RedisLimiter)",
        )


def _version() -> str:
    from ._version import __version__

    return __version__


_UNSET: Final = object()
_instruments: Any = _UNSET


def _get() -> _Instruments | None:
    """The instruments, made on the first call; None when opentelemetry-api is absent."""
    global _instruments
    if _instruments is _UNSET:
        try:
            _instruments = _Instruments()
        except ImportError:
            _instruments = None
    return _instruments  # type: ignore[no-any-return]


# -- the clients watched by the observable gauges ----------------------------------------


_watched: weakref.WeakKeyDictionary[object, tuple[Gate, RateLimiter, Target]] = (
    weakref.WeakKeyDictionary()
)


def watch(client: object, gate: Gate, limiter: RateLimiter, target: Target) -> None:
    """Report ``client``'s requests in flight, its ceiling and its limiter's Redis
    round trips while it lives (no import: the gauges read this when collected)."""
    _watched[client] = (gate, limiter, target)


def _by_target(value: Any) -> Iterator[Observation]:
    from opentelemetry.metrics import Observation

    sums: dict[tuple[tuple[str, Any], ...], int] = {}
    for gate, _limiter, target in list(_watched.values()):
        key = tuple(sorted(target.attributes.items()))
        sums[key] = sums.get(key, 0) + value(gate)
    for key, total in sums.items():
        yield Observation(total, dict(key))


def _in_flight(_options: CallbackOptions) -> Iterable[Observation]:
    return _by_target(lambda gate: gate.in_use)


def _ceiling(_options: CallbackOptions) -> Iterable[Observation]:
    return _by_target(lambda gate: gate.limit())


def _round_trips(_options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    limiters = {id(lim): lim for _gate, lim, _target in list(_watched.values())}
    for limiter in limiters.values():
        trips = getattr(limiter, "round_trips", None)
        if isinstance(trips, int):
            yield Observation(trips, {"asyncimg.limiter.name": str(getattr(limiter, "name", ""))})


# -- one call ----------------------------------------------------------------------------


def start(call: CallInfo, stats: CallStats | None) -> CallSpan | None:
    """Begin ``call``'s span as a child of the current context and make it current;
    None (nothing done) when opentelemetry-api is not installed. The span reads the
    call's attempts from ``stats`` (a new one when None: the client records into
    ``CallSpan.stats``)."""
    found = _get()
    if found is None:
        return None
    return CallSpan(found, call, stats if stats is not None else CallStats())


def trace_headers() -> dict[str, str]:
    """The current context as W3C ``traceparent``/``tracestate`` headers (empty without
    opentelemetry-api or a span)."""
    found = _get()
    carrier: dict[str, str] = {}
    if found is not None:
        found.propagate.inject(carrier)
    return carrier


class CallSpan:
    """One call's span, current from :func:`start` until :meth:`succeeded` or
    :meth:`failed` ends it; both must be called in the task that started it."""

    __slots__ = ("_call", "_found", "_paused", "_span", "_started", "_token", "stats")

    def __init__(self, found: _Instruments, call: CallInfo, stats: CallStats) -> None:
        self.stats = stats
        self._found = found
        self._call = call
        self._started = time.monotonic()
        self._paused = 0
        self._token: object = None
        self._span: Span = found.tracer.start_span(call.span_name, kind=found.client_kind)
        if self._span.is_recording():  # not the API's no-op span, nor one sampled out
            self._span.set_attributes(call.attributes())
            parent: Context = found.trace.set_span_in_context(self._span)
            self._token = found.context.attach(parent)

    def retry(
        self, exc: BaseException, attempt: int, reason: str, wait: float, pause_all: bool
    ) -> None:
        """Record a retry as an event on the span (a 429 that pauses the limiter counts)."""
        if pause_all:
            self._paused += 1
            self._found.pauses.add(1, self._call.target.attributes)
        if self._span.is_recording():
            event: dict[str, Any] = {
                "asyncimg.attempt": attempt,
                "asyncimg.retry.reason": reason,
                "asyncimg.retry.wait": wait,
                "asyncimg.retry.pause_all": pause_all,
                "error.type": error_type(exc),
            }
            status = getattr(exc, "status_code", None)
            if isinstance(status, int):
                event["http.response.status_code"] = status
            self._span.add_event("asyncimg.retry", event)

    def succeeded(self, request_id: str | None, status: int, result: object) -> None:
        """End the span and record the metrics of a call that returned ``result``."""
        span = self._span
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if request_id is not None:
                span.set_attribute("asyncimg.request_id", request_id)
        usage = getattr(result, "usage", None)
        if usage is not None and self._call.operation is not None:
            metric = self._call.metric_attributes()
            for kind in ("input", "output"):
                tokens = getattr(usage, f"{kind}_tokens", None)
                if isinstance(tokens, int):
                    span.set_attribute(f"gen_ai.usage.{kind}_tokens", tokens)
                    self._found.tokens.record(tokens, {**metric, "gen_ai.token.type": kind})
        self._end(None)

    def failed(self, exc: BaseException) -> None:
        """End the span of a call that raised ``exc``: status ERROR and ``error.type``
        (a cancelled call is marked ``asyncimg.cancelled``, not an error)."""
        span = self._span
        if not isinstance(exc, Exception):
            span.set_attribute("asyncimg.cancelled", True)
            self._end(None)
            return
        kind = error_type(exc)
        if span.is_recording():
            span.set_attribute("error.type", kind)
            status = getattr(exc, "status_code", None)
            if isinstance(status, int):
                span.set_attribute("http.response.status_code", status)
            request_id = getattr(exc, "request_id", None)
            if isinstance(request_id, str):
                span.set_attribute("asyncimg.request_id", request_id)
            span.record_exception(exc)
            span.set_status(self._found.error, str(exc))
        self._end(kind)

    def _end(self, error: str | None) -> None:
        found, span, stats = self._found, self._span, self.stats
        granted = sum(images for _at, images in stats.sent)
        if span.is_recording():
            span.set_attribute("asyncimg.attempts", stats.attempts)
            if granted:
                span.set_attribute("asyncimg.limiter.wait", stats.waited)
                span.set_attribute("asyncimg.limiter.pauses", self._paused)
        if self._call.operation is not None:
            metric = self._call.metric_attributes()
            if error is not None:
                metric["error.type"] = error
            found.duration.record(time.monotonic() - self._started, metric)
        if granted:
            target = self._call.target.attributes
            found.wait.record(stats.waited, target)
            found.granted.add(granted, target)
        span.end()
        if self._token is not None:
            found.context.detach(self._token)



# -- the batch CLI's exporter -------------------------------------------------------------


class ExporterUnavailable(Exception):
    """``--otel`` was asked for, but the SDK or the OTLP exporter is not installed."""


def export_otlp(service_name: str = "asyncimg") -> Callable[[], None]:
    """Set the global tracer and meter providers of the OpenTelemetry SDK, exporting by
    OTLP (for the batch CLI's ``--otel``; a library never does this); returns the function
    that flushes and shuts them down.

    The standard variables configure it: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the
    per-signal ones), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_PROTOCOL``
    (``http/protobuf`` by default, or ``grpc``), ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` (else the service is ``service_name``),
    ``OTEL_METRIC_EXPORT_INTERVAL``; ``OTEL_SDK_DISABLED=true`` sets nothing up.

    Raises:
        ExporterUnavailable: opentelemetry-sdk or the protocol's OTLP exporter is missing.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return lambda: None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip()
    kind = "grpc" if protocol == "grpc" else "http"
    package = f"opentelemetry-exporter-otlp-proto-{kind}"
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        base = f"opentelemetry.exporter.otlp.proto.{kind}"
        spans = importlib.import_module(f"{base}.trace_exporter").OTLPSpanExporter()
        points = importlib.import_module(f"{base}.metric_exporter").OTLPMetricExporter()
    except ImportError as exc:
        raise ExporterUnavailable(
            f"--otel needs opentelemetry-sdk and {package} ({exc}): "
            f"pip install 'asyncimg[otel]' opentelemetry-sdk {package}"
        ) from None
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[PeriodicExportingMetricReader(points)],
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return shutdown
