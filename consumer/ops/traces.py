"""Spans of the requests a consumer answers, continuing each request's ``traceparent``.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (see :mod:`producer_sdk._tracing`), every request
gets a CONSUMER span ``process <topic>`` whose parent is the request record's
``traceparent`` (the SDK's send span), with OpenTelemetry's messaging attributes and the
gen_ai ones, and child spans ``queue wait`` (receipt to admission), ``inference`` (each
engine attempt) and ``publish``. The result and DLQ records carry the request span's
context in their own ``traceparent`` header. Without the variable nothing of OpenTelemetry
is imported and the records carry the request's ``traceparent`` unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from producer_sdk import _tracing

__all__ = ["Traces"]


class _Work(Protocol):
    """What a span needs of :class:`consumer.kafka.intake.Work`."""

    request: Any
    tp: Any
    offset: int
    tier: str
    received_monotonic: float
    traceparent: str | None
    trace: Any


@dataclass(slots=True)
class _Spans:
    request: Any
    traceparent: str | None
    children: list[Any] = field(default_factory=list)
    waiting_since: float | None = None  # monotonic end of the last attempt (a retry waits)


def _epoch_ns(monotonic: float) -> int:
    """A :func:`time.monotonic` instant on the wall clock spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


class Traces:
    """Request spans of one consumer; every method is a no-op when tracing is off."""

    def __init__(self, tracer: Any | None, *, group: str, consumer_id: str) -> None:
        self._tracer = tracer
        self._group = group
        self._consumer_id = consumer_id

    @classmethod
    def from_env(cls, *, group: str, consumer_id: str) -> Traces:
        """On when OTEL_EXPORTER_OTLP_ENDPOINT is set (or a provider was chosen)."""
        tracer = _tracing.tracer("explainstream.consumer", service_name="explainstream-consumer")
        return cls(tracer, group=group, consumer_id=consumer_id)

    @property
    def on(self) -> bool:
        """Spans are being recorded."""
        return self._tracer is not None

    def begin(self, work: _Work, started: float) -> None:
        """Open the request span (first attempt only) and record its queue wait."""
        if self._tracer is None:
            return
        if work.trace is None:
            request = work.request
            span = _tracing.start_span(
                self._tracer,
                f"process {work.tp.topic}",
                kind="CONSUMER",
                parent=work.traceparent,
                start_time=_epoch_ns(work.received_monotonic),
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": work.tp.topic,
                    "messaging.destination.partition.id": str(work.tp.partition),
                    "messaging.kafka.offset": work.offset,
                    "messaging.consumer.group.name": self._group,
                    "messaging.message.id": request.request_id,
                    "messaging.client.id": self._consumer_id,
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.max_tokens": request.max_tokens,
                    "gen_ai.request.temperature": request.temperature,
                    "explainstream.tier": work.tier,
                    "explainstream.prompt_profile": request.prompt_profile,
                },
            )
            work.trace = _Spans(span, _tracing.traceparent_of(span))
        spans: _Spans = work.trace
        since = spans.waiting_since if spans.waiting_since is not None else work.received_monotonic
        wait = _tracing.start_span(
            self._tracer,
            "queue wait",
            parent=spans.traceparent,
            start_time=_epoch_ns(since),
        )
        wait.end(end_time=_epoch_ns(started))

    @contextlib.contextmanager
    def span(self, work: _Work, name: str, **attributes: Any) -> Iterator[Any]:
        """A child span of the request around the block (yields None when off)."""
        spans: _Spans | None = work.trace
        if self._tracer is None or spans is None:
            yield None
            return
        child = _tracing.start_span(
            self._tracer, name, parent=spans.traceparent, attributes=attributes or None
        )
        spans.children.append(child)
        try:
            yield child
        except BaseException as exc:
            _tracing.end_span(child, exc)
            raise
        finally:
            spans.waiting_since = time.monotonic()
        _tracing.end_span(child)

    def generated(self, work: _Work, model: str, generated: Any) -> None:
        """gen_ai attributes of one generation on the request span and its inference span."""
        spans: _Spans | None = work.trace
        if spans is None:
            return
        attributes = {
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": generated.prompt_tokens,
            "gen_ai.usage.output_tokens": generated.completion_tokens,
            "gen_ai.response.finish_reasons": [generated.finish_reason],
        }
        if generated.first_token_s is not None:
            attributes["explainstream.time_to_first_token_s"] = generated.first_token_s
        targets = [spans.request, *spans.children[-1:]]
        for span in targets:
            span.set_attributes(attributes)

    def finish(self, work: _Work, status: str | None, error: BaseException | None = None) -> None:
        """End the request span: answered with ``status``, or given up (None)."""
        spans: _Spans | None = work.trace
        if spans is None:
            return
        work.trace = None
        span = spans.request
        span.set_attribute("explainstream.status", status or "abandoned")
        if status not in (None, "OK") and error is None:
            span.set_attribute("error.type", status)
        _tracing.end_span(span, error)

    def headers(self, work: _Work) -> list[tuple[str, bytes]]:
        """The ``traceparent`` header a result or DLQ record of ``work`` carries."""
        spans: _Spans | None = work.trace
        value = spans.traceparent if spans is not None and spans.traceparent else work.traceparent
        return [("traceparent", value.encode())] if value else []
