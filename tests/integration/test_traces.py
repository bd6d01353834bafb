"""Traces across Kafka on a real broker: one trace from the SDK's submit to the result record,
and the same spans exported over OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from consumer.config import Settings
from consumer.kafka.topics import settings_connection
from consumer.runtime.service import ConsumerService
from producer_sdk import ExplanationClient, ExplanationProducer, ResultStatus, _tracing
from schemas.version import __version__
from tests.integration.test_sdk import read_all

pytestmark = pytest.mark.kafka

CONTEXT = {
    "analysis_type": "sentiment",
    "symbol": "AAPL",
    "metrics": {"sentiment_score": 0.75, "current_price": 150.0},
}


async def _produce_with_header(
    bootstrap: str, topic: str, value: bytes, header: tuple[str, bytes]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, headers=[header])
    finally:
        await producer.stop()


def _header(record: Any, name: str) -> str | None:
    return next((v.decode() for k, v in record.headers if k == name), None)


@pytest.fixture
def exporter() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _tracing.use_provider(provider)
    yield memory
    _tracing.use_provider(None)
    provider.shutdown()


async def test_one_trace_from_submit_to_result_and_dlq(
    topics: Settings, make_settings: Callable[..., Settings], exporter: Any
) -> None:
    settings = make_settings(prometheus_enabled=True)
    conn = settings_connection(topics)
    bad_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with ConsumerService(settings) as service:
        async with ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client:
            result = await client.explain(CONTEXT, priority="high", timeout_s=30)
        await _produce_with_header(
            topics.kafka_bootstrap_servers,
            settings.request_topics()["normal"],
            b"not avro",
            ("traceparent", bad_parent.encode()),
        )
        dead = await read_all(conn, settings.dlq_topic, 1)
        assert service.metrics is not None
        registry = service.metrics.registry
        assert service.status()["version"] == __version__
    assert result.status is ResultStatus.OK and result.service_version == __version__
    for name in ("time_to_first_token", "time_per_output_token"):
        sample = f"explainstream_{name}_seconds_count"
        assert registry.get_sample_value(sample, {"priority": "high"}) == 1, name
        assert registry.get_sample_value(sample, {"priority": "low"}) == 0, name

    request_topic = settings.request_topics()["high"]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    names = {"explain", f"send {request_topic}", f"process {request_topic}"}
    assert names | {"queue wait", "inference", "publish"} <= set(spans)
    trace_ids = {s.context.trace_id for s in exporter.get_finished_spans()}
    assert len(trace_ids) == 1, "submit, consumer and result are one trace"
    explain, send = spans["explain"], spans[f"send {request_topic}"]
    process = spans[f"process {request_topic}"]
    assert send.parent.span_id == explain.context.span_id
    assert process.parent.span_id == send.context.span_id
    assert spans["inference"].parent.span_id == process.context.span_id
    attrs = process.attributes
    assert attrs["messaging.destination.name"] == request_topic
    assert attrs["messaging.destination.partition.id"] == "0"
    assert attrs["messaging.consumer.group.name"] == settings.kafka_group_id
    assert attrs["messaging.kafka.offset"] == result.request_offset.offset
    assert attrs["gen_ai.request.model"] == "fake"
    assert attrs["gen_ai.usage.output_tokens"] == result.completion_tokens
    assert attrs["gen_ai.usage.input_tokens"] == result.prompt_tokens
    assert explain.attributes["explainstream.status"] == "OK"

    (record,) = await read_all(conn, settings.results_topic, 1)
    version, trace_id, span_id, flags = (_header(record, "traceparent") or "").split("-")
    assert (version, trace_id) == ("00", f"{process.context.trace_id:032x}")
    assert span_id == f"{process.context.span_id:016x}" and int(flags, 16) & 1  # sampled
    assert _header(dead[0], "traceparent") == bad_parent


class _Receiver(BaseHTTPRequestHandler):
    posts: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, bytes]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "explainstream-test")
    _tracing.use_provider(None)
    try:
        yield _Receiver.posts
    finally:
        _tracing.use_provider(None)
        server.shutdown()
        server.server_close()


async def test_spans_are_exported_over_otlp_http(
    topics: Settings, make_settings: Callable[..., Settings], otlp_receiver: list[Any]
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    conn = settings_connection(topics)
    async with ConsumerService(make_settings()):
        async with ExplanationProducer(conn, topic_prefix=topics.kafka_topic_prefix) as producer:
            request_id = await producer.submit(CONTEXT, priority="urgent")
        await read_all(conn, topics.results_topic, 1)
    assert _tracing.flush()
    spans, services = [], set()
    for path, content_type, body in otlp_receiver:
        assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    services.add(attr.value.string_value)
            for scope in resource_spans.scope_spans:
                spans.extend(scope.spans)
    by_name = {s.name: s for s in spans}
    topic = topics.request_topics()["urgent"]
    assert {f"send {topic}", f"process {topic}", "inference", "publish"} <= set(by_name)
    assert len({s.trace_id for s in spans}) == 1
    process = by_name[f"process {topic}"]
    assert process.parent_span_id == by_name[f"send {topic}"].span_id
    ids = {a.key: a.value.string_value for a in process.attributes}
    assert ids["messaging.message.id"] == request_id
    assert services == {"explainstream-test"}
