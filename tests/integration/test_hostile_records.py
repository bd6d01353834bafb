"""Records the Kafka client itself cannot parse never stop the group (real broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from consumer.config import Settings
from consumer.kafka.topics import ensure_service_topics
from consumer.runtime.service import ConsumerService
from schemas.models import ResultStatus
from tests.integration.helpers import CODEC, collect, make_request

pytestmark = pytest.mark.kafka


class NotUtf8(str):
    """A header key whose bytes on the wire are not UTF-8 (any raw client can send one)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfekey"


async def send_with_hostile_header(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, bool]]
) -> None:
    """Send (key, value, hostile) in order to partition 0; hostile ones carry the header."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value,
                key=key,
                partition=0,
                headers=[(NotUtf8("k"), b"v")] if hostile else None,
            )
            for key, value, hostile in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_rest_answered(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pure-Python batch builder writes header keys through str.encode: NotUtf8 reaches
    # the broker as it is. Only this test's producer is affected.
    monkeypatch.setattr(
        message_accumulator, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy
    )
    settings = make_settings()
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    topic = settings.request_topics()["normal"]
    requests = [make_request(i) for i in range(20)]
    hostile = requests[10]
    await send_with_hostile_header(
        boot,
        topic,
        [(r.request_id.encode(), CODEC.encode_request(r), r is hostile) for r in requests],
    )
    async with ConsumerService(settings) as service:
        results = await collect(boot, settings.results_topic, 19, timeout_s=60)
        dlq = await collect(boot, settings.dlq_topic, 1, timeout_s=30, decode=None)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{service.http_port}/health") as resp,
        ):
            health = resp.status
    assert health == 200  # the intake is alive
    answered = {r.request_id for r in results}
    assert answered == {r.request_id for r in requests if r is not hostile}
    assert all(r.status is ResultStatus.OK for r in results)
    (letter,) = dlq
    headers = {k: v for k, v in letter.headers}
    assert headers["dlq.original.offset"] == b"10"
    assert headers["dlq.stage"] == b"fetch"
    assert headers["dlq.error.class"] == b"UnicodeDecodeError"
    assert letter.value in (b"", None)  # a reference: its bytes cannot be read
