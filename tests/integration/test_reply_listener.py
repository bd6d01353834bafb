"""The client's reply listener (behind the SDK's explain() and the gateway) survives what
used to end it silently: an unparseable record on the results topic, a caller that timed
out while its result was decoded, and it is supervised when it dies anyway."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import producer_sdk.client as client_module
from consumer.config import Settings
from consumer.kafka.topics import settings_connection
from consumer.runtime.service import ConsumerService
from producer_sdk import ExplanationClient
from schemas.models import AnalysisContext, ResultStatus
from tests.hostile_wire import send_with_hostile_header, use_python_builder

pytestmark = pytest.mark.kafka

CONTEXT = AnalysisContext(analysis_type="sentiment", symbol="AAPL", metrics={"x": 0.5})


async def test_an_unparseable_result_record_does_not_stop_the_listener(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_python_builder(monkeypatch)
    conn = settings_connection(topics)
    async with (
        ConsumerService(topics),
        ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client,
    ):
        first = await client.explain(CONTEXT, timeout_s=30)
        # Another writer's record the client cannot parse lands on the results topic.
        await send_with_hostile_header(
            {"bootstrap_servers": topics.kafka_bootstrap_servers},
            topics.results_topic,
            [(b"k", b"junk", True)],
        )
        second = await client.explain(CONTEXT, timeout_s=30)
        assert client.listening
    assert first.status is ResultStatus.OK and second.status is ResultStatus.OK


async def test_a_caller_that_timed_out_during_decoding_does_not_kill_the_listener(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = client_module.resolve_waiting
    armed = False
    entered, decoded = asyncio.Event(), asyncio.Event()

    async def resolve_slowly(codec: Any, value: Any, **kw: Any) -> Any:
        if armed and not entered.is_set():
            entered.set()
            await asyncio.sleep(1.5)  # the caller's 1 s timeout passes meanwhile
            try:
                return await real(codec, value, **kw)
            finally:
                decoded.set()
        return await real(codec, value, **kw)

    monkeypatch.setattr(client_module, "resolve_waiting", resolve_slowly)
    conn = settings_connection(topics)
    async with (
        ConsumerService(topics),
        ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client,
    ):
        warm = await client.explain(CONTEXT, timeout_s=30)  # the service is up and answering
        armed = True
        with pytest.raises(Exception, match="within 1s"):
            await client.explain(CONTEXT, timeout_s=1)
        await asyncio.wait_for(decoded.wait(), 30)  # its result was decoded after it left
        assert entered.is_set()
        later = await client.explain(CONTEXT, timeout_s=30)
        assert client.listening
    assert warm.status is ResultStatus.OK and later.status is ResultStatus.OK


async def test_a_listener_that_dies_is_reported_and_pending_callers_fail_fast(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: ExplanationClient, key: Any, value: Any) -> None:
        raise RuntimeError("a bug in delivery")

    monkeypatch.setattr(ExplanationClient, "_deliver", broken)
    conn = settings_connection(topics)
    async with (
        ConsumerService(topics),
        ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client,
    ):
        with pytest.raises(Exception, match="reply listener died"):
            await client.explain(CONTEXT, timeout_s=30)
        assert not client.listening
