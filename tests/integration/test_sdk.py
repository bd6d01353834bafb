"""The producer SDK against a real broker: records, request/reply and the results reader."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from consumer.config import Settings
from consumer.kafka.topics import settings_connection
from producer_sdk import (
    ExplainTimeout,
    ExplanationClient,
    ExplanationProducer,
    ResultsReader,
    ResultStatus,
    SyncExplanationClient,
    SyncExplanationProducer,
)
from producer_sdk.connection import KafkaConnection
from schemas.codec import Codec

pytestmark = pytest.mark.kafka

CONTEXT = {
    "analysis_type": "sentiment",
    "symbol": "AAPL",
    "metrics": {"sentiment_score": 0.75, "current_price": 150.0, "iv_rank": 65.0},
}
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


async def read_all(conn: KafkaConnection, topic: str, expected: int) -> list[Any]:
    """Every record of ``topic`` from the beginning, until ``expected`` were read."""
    consumer = AIOKafkaConsumer(
        topic, **conn.aiokafka_kwargs(), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(20):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


def producer_for(settings: Settings, **kwargs: Any) -> ExplanationProducer:
    return ExplanationProducer(
        settings_connection(settings), topic_prefix=settings.kafka_topic_prefix, **kwargs
    )


async def test_submit_writes_a_framed_request_to_the_tier_topic(topics: Settings) -> None:
    conn = settings_connection(topics)
    async with producer_for(topics, source="pricing-svc") as producer:
        request_id = await producer.submit(
            CONTEXT, priority="high", max_tokens=64, deadline=timedelta(minutes=5)
        )
        traced = await producer.submit(
            CONTEXT, priority="urgent", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"
        )
    [record] = await read_all(conn, topics.topic("requests.high"), 1)
    assert record.key == request_id.encode()
    headers = dict(record.headers)
    assert TRACEPARENT.match(headers["traceparent"].decode())
    assert record.value[:5] == b"\x00\x00\x00\x00\x01"
    request = Codec().decode_request(record.value)
    assert request.request_id == request_id
    assert request.max_tokens == 64
    assert request.source == "pricing-svc"
    assert request.deadline is not None and request.deadline > request.created_at
    assert request.context.metrics["iv_rank"] == 65.0
    [urgent] = await read_all(conn, topics.topic("requests.urgent"), 1)
    assert urgent.key == traced.encode()
    assert dict(urgent.headers)["traceparent"] == b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"


async def test_submit_many_keeps_input_order(topics: Settings) -> None:
    contexts = [{**CONTEXT, "symbol": s} for s in ("AAPL", "MSFT", "NVDA", "TSLA")]
    async with producer_for(topics) as producer:
        ids = await producer.submit_many(contexts, priority="low", temperature=0.0)
    records = await read_all(settings_connection(topics), topics.topic("requests.low"), 4)
    decoded = [Codec().decode_request(r.value) for r in records]
    assert [d.request_id for d in decoded] == ids
    assert [d.context.symbol for d in decoded] == ["AAPL", "MSFT", "NVDA", "TSLA"]


async def test_explain_returns_the_consumers_result(
    make_settings: Callable[..., Settings], topics: Settings
) -> None:
    from consumer.runtime.service import ConsumerService

    conn = settings_connection(topics)
    async with (
        ConsumerService(make_settings()),
        ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client,
    ):
        results = await asyncio.gather(
            client.explain(CONTEXT, priority="urgent", timeout_s=30),
            client.explain({**CONTEXT, "symbol": "MSFT"}, priority="low", timeout_s=30),
        )
    assert [r.status for r in results] == [ResultStatus.OK, ResultStatus.OK]
    assert [r.tier for r in results] == ["urgent", "low"]
    assert results[0].request_id != results[1].request_id
    assert all(r.explanation for r in results)


async def test_explain_times_out_without_a_consumer(topics: Settings) -> None:
    conn = settings_connection(topics)
    async with ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client:
        with pytest.raises(ExplainTimeout) as info:
            await client.explain(CONTEXT, timeout_s=1)
    assert isinstance(info.value, TimeoutError)
    assert info.value.retriable


async def test_results_reader_reads_to_the_end_and_stops(
    make_settings: Callable[..., Settings], topics: Settings
) -> None:
    from consumer.runtime.service import ConsumerService

    conn = settings_connection(topics)
    async with (
        ConsumerService(make_settings()),
        ExplanationClient(conn, topic_prefix=topics.kafka_topic_prefix) as client,
    ):
        expected = [(await client.explain(CONTEXT, timeout_s=30)).request_id for _ in range(3)]
    reader = ResultsReader(
        conn, topic_prefix=topics.kafka_topic_prefix, from_beginning=True, follow=False
    )
    seen = [r.request_id async for r in reader]
    assert seen == expected
    async with ResultsReader(
        conn,
        topic_prefix=topics.kafka_topic_prefix,
        from_beginning=True,
        max_results=2,
        group_id=f"{topics.kafka_topic_prefix}-downstream",
    ) as grouped:
        assert [r.request_id async for r in grouped] == expected[:2]


async def test_sync_wrappers(topics: Settings) -> None:
    conn = settings_connection(topics)
    prefix = topics.kafka_topic_prefix

    def produce_blocking() -> list[str]:
        with SyncExplanationProducer(conn, topic_prefix=prefix) as producer:
            ids = producer.submit_many([CONTEXT, CONTEXT], priority="high")
            ids.append(producer.submit(CONTEXT, priority="high"))
        return ids

    def explain_blocking() -> None:
        with (
            SyncExplanationClient(conn, topic_prefix=prefix) as client,
            pytest.raises(ExplainTimeout),
        ):
            client.explain(CONTEXT, timeout_s=0.5)

    ids = await asyncio.to_thread(produce_blocking)
    records = await read_all(conn, f"{prefix}.requests.high", 3)
    assert [r.key.decode() for r in records] == ids
    await asyncio.to_thread(explain_blocking)
