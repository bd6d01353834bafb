"""The producer SDK without a broker: exported names, validation, deadlines, tracing, lifecycle."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta

import pytest

import producer_sdk
from producer_sdk import (
    ExplanationClient,
    ExplanationProducer,
    KafkaConnection,
    KafkaUnavailable,
    ResultsReader,
    ValidationError,
    new_traceparent,
)
from producer_sdk._requests import build_request, resolve_deadline, validate_traceparent

CONTEXT = {"analysis_type": "sentiment", "symbol": "AAPL", "metrics": {"iv_rank": 65.0}}
NOWHERE = KafkaConnection(bootstrap_servers="127.0.0.1:9")


def test_exported_names_are_pinned() -> None:
    assert sorted(producer_sdk.__all__) == sorted(
        [
            "TIERS",
            "AnalysisContext",
            "DecodeError",
            "ExplainTimeout",
            "ExplainstreamError",
            "ExplanationClient",
            "ExplanationProducer",
            "ExplanationRequest",
            "ExplanationResult",
            "KafkaConnection",
            "KafkaUnavailable",
            "ResultStatus",
            "ResultsReader",
            "SyncExplanationClient",
            "SyncExplanationProducer",
            "ValidationError",
            "new_traceparent",
            "results",
        ]
    )
    for name in producer_sdk.__all__:
        assert hasattr(producer_sdk, name), name
    assert producer_sdk.TIERS == ("urgent", "high", "normal", "low")


def test_base_install_imports_no_heavy_modules() -> None:
    code = (
        "import sys, json, producer_sdk, schemas;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"llama_cpp", "aiohttp", "prometheus_client", "numpy", "consumer"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": True}, "booleans"),
        ({"reply_to": "bad topic!"}, "reply_to"),
        ({"prompt_profile": ""}, "prompt_profile"),
        ({"request_id": "nope"}, "request_id"),
        ({"deadline": timedelta(seconds=-1)}, "not in the future"),
        ({"deadline": "tomorrow"}, "deadline must be"),
    ],
)
def test_invalid_options_raise_a_clear_validation_error(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build_request(CONTEXT, **options)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({}, "context.analysis_type"),
        ({"analysis_type": "x", "metrics": {"a": "high"}}, "context.metrics.a"),
        ({"analysis_type": "x", "metrics": {"a": float("nan")}}, "finite"),
        ({"analysis_type": "x", "surprise": 1}, "context.surprise"),
        ("sentiment", "mapping"),
    ],
)
def test_invalid_contexts_name_the_field(context: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build_request(context)  # type: ignore[arg-type]


def test_deadline_forms() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert resolve_deadline(None, now) is None
    assert resolve_deadline(1500, now) == now + timedelta(milliseconds=1500)
    assert resolve_deadline(timedelta(seconds=3), now) == now + timedelta(seconds=3)
    naive = datetime(2030, 1, 2)
    assert resolve_deadline(naive, now) == naive.replace(tzinfo=UTC)
    with pytest.raises(ValidationError):
        resolve_deadline(now - timedelta(seconds=1), now)


def test_traceparent() -> None:
    value = new_traceparent()
    assert validate_traceparent(value) == value
    assert new_traceparent() != value
    for bad in (
        "",
        "01-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "00-" + "0" * 32 + "-" + "b" * 16 + "-01",
        "00-abc-def-01",
    ):
        with pytest.raises(ValidationError, match="traceparent"):
            validate_traceparent(bad)


async def test_unknown_priority_is_refused_before_connecting() -> None:
    producer = ExplanationProducer(NOWHERE)
    with pytest.raises(ValidationError, match="priority 'critical'"):
        await producer.submit(CONTEXT, priority="critical")


async def test_submit_many_validates_everything_before_sending() -> None:
    producer = ExplanationProducer(NOWHERE)
    with pytest.raises(ValidationError, match="context #1"):
        await producer.submit_many([CONTEXT, {"metrics": {}}, CONTEXT])


async def test_unreachable_cluster_is_kafka_unavailable() -> None:
    for client in (
        ExplanationProducer(NOWHERE),
        ExplanationClient(NOWHERE),
        ResultsReader(NOWHERE),
    ):
        with pytest.raises(KafkaUnavailable, match=r"127\.0\.0\.1:9"):
            async with client:
                pass


async def test_not_started_producer_says_so() -> None:
    producer = ExplanationProducer(NOWHERE)
    with pytest.raises(producer_sdk.ExplainstreamError, match="not started"):
        await producer.submit(CONTEXT)


def test_unclosed_client_warns() -> None:
    producer = ExplanationProducer(NOWHERE)
    producer._producer = object()  # as if started
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del producer
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


class _Stoppable:
    """Stands in for the started aiokafka producer: records that close() stopped it."""

    stopped = False

    async def stop(self) -> None:
        self.stopped = True


async def test_closed_client_does_not_warn() -> None:
    producer = ExplanationProducer(NOWHERE)
    inner = _Stoppable()
    producer._producer = inner  # type: ignore[assignment]  # as if started
    await producer.close()
    assert inner.stopped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del producer
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_from_env_reads_prefix_and_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "prod")
    producer = ExplanationProducer.from_env(source="svc")
    assert producer.connection.bootstrap_servers == "kafka-1:9092"
    assert producer.topic_prefix == "prod"
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "bad prefix")
    with pytest.raises(producer_sdk.ExplainstreamError, match="KAFKA_TOPIC_PREFIX"):
        ExplanationProducer.from_env()
