"""OpenTelemetry traces, loaded only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Nothing here imports ``opentelemetry`` until tracing is on, so the base install and a
service without the variable pay nothing. With it, :func:`tracer` returns a tracer whose
spans go, over OTLP/HTTP, to that endpoint: through the application's own SDK
``TracerProvider`` when it installed one, else through one built here (and installed
globally, so the application's other spans share it). OpenTelemetry's own variables
(``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...) apply as usual.
:func:`use_provider` lets a test or an embedding application choose the provider.

The W3C ``traceparent`` header is the one carrier: the SDK writes it on every request,
the consumer continues it and copies its own context onto the result and DLQ records.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from producer_sdk._requests import new_traceparent
from schemas.models import ExplanationRequest
from schemas.version import __version__

__all__ = [
    "ENDPOINT_ENV",
    "context_from",
    "enabled",
    "end_span",
    "explain_span",
    "flush",
    "send_spans",
    "start_span",
    "traceparent_of",
    "tracer",
    "use_provider",
]

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"

_lock = threading.Lock()
_provider: Any = None


def enabled() -> bool:
    """Tracing is on: the endpoint variable is set, or a provider was chosen."""
    return _provider is not None or bool(os.environ.get(ENDPOINT_ENV))


def use_provider(provider: Any) -> None:
    """Send this package's spans to ``provider`` (None: back to the environment's choice)."""
    global _provider
    with _lock:
        _provider = provider


def _configured(service_name: str) -> Any:
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):  # the application configured OpenTelemetry
            _provider = current
            return current
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; this is only the default.
            resource = resource.merge(Resource({SERVICE_NAME: service_name}))
        provider = TracerProvider(resource=resource)
        # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT itself and posts to <it>/v1/traces.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


def tracer(name: str, service_name: str = "explainstream") -> Any | None:
    """A tracer named ``name``, or None when tracing is off (nothing imported then)."""
    if not enabled():
        return None
    from opentelemetry import trace

    return trace.get_tracer(name, __version__, tracer_provider=_configured(service_name))


def flush(timeout_ms: int = 10_000) -> bool:
    """Export the spans still buffered; True when done (or when tracing never started)."""
    provider = _provider
    if provider is None:
        return True
    return bool(provider.force_flush(timeout_ms))


def context_from(traceparent: str | None) -> Any:
    """The OpenTelemetry context a ``traceparent`` header names (an empty one when None)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent} if traceparent else {}
    return TraceContextTextMapPropagator().extract(carrier)


def traceparent_of(span: Any) -> str | None:
    """The ``traceparent`` header value naming ``span`` (None for a non-recording span)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


def start_span(
    tracer: Any,
    name: str,
    *,
    kind: str = "INTERNAL",
    parent: str | None = None,
    attributes: dict[str, Any] | None = None,
    start_time: int | None = None,
) -> Any:
    """Start (not activate) a span; its parent is ``parent`` (a traceparent) when given,
    else the current span. ``kind`` names a ``SpanKind``; ``start_time`` is epoch ns."""
    from opentelemetry.trace import SpanKind

    return tracer.start_span(
        name,
        context=context_from(parent) if parent else None,
        kind=SpanKind[kind],
        attributes=attributes,
        start_time=start_time,
    )


def end_span(span: Any, error: BaseException | None = None, end_time: int | None = None) -> None:
    """End ``span``, marking it failed with ``error`` when given."""
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end(end_time=end_time)


def send_spans(
    topic: str, requests: Sequence[ExplanationRequest], parent: str | None
) -> list[tuple[Any, str]]:
    """One PRODUCER span per request with the ``traceparent`` that names it; [] when off."""
    sdk_tracer = tracer("explainstream.sdk")
    if sdk_tracer is None:
        return []
    spans = []
    for request in requests:
        span = start_span(
            sdk_tracer,
            f"send {topic}",
            kind="PRODUCER",
            parent=parent,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.message.id": request.request_id,
                "messaging.kafka.message.key": request.request_id,
            },
        )
        spans.append((span, traceparent_of(span) or parent or new_traceparent()))
    return spans


def explain_span(request: ExplanationRequest, tier: str, parent: str | None) -> Any | None:
    """The CLIENT span of one request/reply round trip (``explain``); None when off."""
    sdk_tracer = tracer("explainstream.sdk")
    if sdk_tracer is None:
        return None
    return start_span(
        sdk_tracer,
        "explain",
        kind="CLIENT",
        parent=parent,
        attributes={
            "messaging.system": "kafka",
            "messaging.message.id": request.request_id,
            "explainstream.tier": tier,
            "gen_ai.operation.name": "chat",
            "gen_ai.request.max_tokens": request.max_tokens,
            "gen_ai.request.temperature": request.temperature,
        },
    )
