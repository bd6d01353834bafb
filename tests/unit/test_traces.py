"""Request spans without a broker: off by default (nothing imported), and what they record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from consumer.engines.base import GenerationResult
from consumer.ops.traces import Traces
from producer_sdk import _tracing
from tests.integration.helpers import make_request

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

_IMPORTS = """
import json, sys
from producer_sdk import _tracing
from consumer.ops.traces import Traces
import consumer.runtime.service, producer_sdk
traces = Traces.from_env(group="g", consumer_id="c")
assert _tracing.send_spans("t", [], None) == []
print(json.dumps([traces.on, sorted(m for m in sys.modules if m.startswith("opentelemetry"))]))
"""


def _run_imports(endpoint: str | None) -> tuple[bool, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS], env=env, capture_output=True, text=True, check=True
    )
    on, modules = json.loads(out.stdout.strip().splitlines()[-1])
    return on, modules


def test_nothing_of_opentelemetry_is_imported_without_the_endpoint() -> None:
    assert _run_imports(None) == (False, [])
    on, modules = _run_imports("http://127.0.0.1:9")  # nothing listens; nothing is sent
    assert on and "opentelemetry.sdk.trace" in modules


@dataclass
class _TP:
    topic: str
    partition: int


@dataclass
class _Work:
    request: Any
    tp: _TP
    offset: int
    tier: str
    received_monotonic: float
    traceparent: str | None
    trace: Any = None


def _work(traceparent: str | None = PARENT) -> _Work:
    return _Work(make_request(), _TP("p.requests.high", 2), 41, "high", 0.0, traceparent)


def test_without_tracing_records_carry_the_request_traceparent_unchanged() -> None:
    traces = Traces(None, group="g", consumer_id="c")
    work = _work()
    traces.begin(work, 1.0)
    with traces.span(work, "inference") as span:
        assert span is None
    traces.finish(work, "OK")
    assert work.trace is None
    assert traces.headers(work) == [("traceparent", PARENT.encode())]
    assert traces.headers(_work(None)) == []


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


def test_request_span_continues_the_traceparent_with_messaging_and_gen_ai(exporter: Any) -> None:
    traces = Traces.from_env(group="grp", consumer_id="c-1")
    assert traces.on
    work = _work()
    traces.begin(work, 0.5)
    with traces.span(work, "inference"):
        generated = GenerationResult("text", 30, 7, "length", first_token_s=0.02)
        traces.generated(work, "smollm2", generated)
    with pytest.raises(RuntimeError), traces.span(work, "publish"):
        raise RuntimeError("broker gone")
    header = traces.headers(work)
    traces.finish(work, "FAILED")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"process p.requests.high", "queue wait", "inference", "publish"}
    process = spans["process p.requests.high"]
    assert {s.context.trace_id for s in spans.values()} == {int(PARENT[3:35], 16)}
    assert process.parent is not None and process.parent.span_id == int(PARENT[36:52], 16)
    for name in ("queue wait", "inference", "publish"):
        assert spans[name].parent.span_id == process.context.span_id, name
    attrs = process.attributes
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == "p.requests.high"
    assert attrs["messaging.destination.partition.id"] == "2"
    assert attrs["messaging.kafka.offset"] == 41
    assert attrs["messaging.consumer.group.name"] == "grp"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "smollm2"
    assert attrs["gen_ai.usage.input_tokens"] == 30
    assert attrs["gen_ai.usage.output_tokens"] == 7
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("length",)
    assert attrs["explainstream.status"] == "FAILED"
    assert spans["inference"].attributes["gen_ai.usage.output_tokens"] == 7
    assert not spans["publish"].status.is_ok
    assert spans["queue wait"].end_time >= spans["queue wait"].start_time
    span_id = f"{process.context.span_id:016x}"
    ((name, value),) = header
    assert (name, value.decode()[:53]) == ("traceparent", f"{PARENT[:36]}{span_id}-")


def test_a_request_without_traceparent_starts_a_trace_of_its_own(exporter: Any) -> None:
    traces = Traces.from_env(group="grp", consumer_id="c-1")
    work = _work(None)
    traces.begin(work, 0.5)
    traces.finish(work, None)
    (process, _wait) = sorted(exporter.get_finished_spans(), key=lambda s: s.name)
    assert process.parent is None
    assert process.attributes["explainstream.status"] == "abandoned"


class _Sink:
    defers_writes = False

    def __init__(self) -> None:
        self.headers: list[tuple[str, bytes]] = []

    async def writable(self, topic: str) -> bool:
        return True

    async def put(self, tp: Any, offset: int, topic: str, key: bytes, value: bytes,
                  headers: list[tuple[str, bytes]], alternatives: Any) -> None:  # fmt: skip
        self.headers = headers


async def test_result_and_publish_dead_letter_records_carry_the_trace_context() -> None:
    from consumer.config import Settings
    from consumer.kafka.intake import Work
    from consumer.kafka.sinks import PublishError
    from consumer.runtime.runner import RequestRunner
    from schemas.codec import Codec
    from tests.unit.test_codec import make_result

    sink = _Sink()
    kwargs: dict[str, Any] = dict.fromkeys(
        ("engine", "breaker", "scheduler", "dead_letters", "limits", "owns", "stopping",
         "on_result", "on_retry", "wake"),
    )  # fmt: skip
    runner = RequestRunner(
        settings=Settings(),
        sink=sink,
        codec=Codec(),
        consumer_id="c",
        **kwargs,  # type: ignore[arg-type]
    )
    work = Work(make_request(), _TP("p.requests.high", 0), 3, "high", 0.0, traceparent=PARENT)
    await runner._put(work, "p.results", make_result())
    assert ("traceparent", PARENT.encode()) in sink.headers
    _, _, dead = runner._dead_letter(work, PublishError("refused"))
    assert dead[0] == ("traceparent", PARENT.encode())
    assert ("dlq.stage", b"publish") in dead


def test_a_retry_waits_from_the_end_of_the_last_attempt(exporter: Any) -> None:
    traces = Traces.from_env(group="grp", consumer_id="c-1")
    work = _work()
    traces.begin(work, 0.5)
    with traces.span(work, "inference"):
        pass
    first_end = next(s for s in exporter.get_finished_spans() if s.name == "inference").end_time
    traces.begin(work, time.monotonic())  # requeued after a retriable failure, admitted again
    traces.finish(work, "OK")
    waits = sorted(
        (s for s in exporter.get_finished_spans() if s.name == "queue wait"),
        key=lambda s: s.start_time,
    )
    assert len(waits) == 2
    assert waits[1].start_time >= first_end - 1_000_000  # the two clocks agree to ~1 ms
    assert waits[0].end_time <= waits[1].start_time
