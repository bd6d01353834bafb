"""The walking skeleton runs on a real Apache Kafka broker."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.runtime.service import ConsumerService
from schemas.models import ResultStatus
from tests.integration.helpers import collect, end_offsets, make_request, produce_requests

pytestmark = pytest.mark.kafka


async def test_end_offset_counts_every_record(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.offsets"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(10):  # ten single-record batches
            await producer.send_and_wait(topic, f"single-{i}".encode())
        batch = producer.create_batch()
        for i in range(10):  # one batch of ten records
            assert batch.append(key=None, value=f"batched-{i}".encode(), timestamp=None) is not None
        partition = (await producer.partitions_for(topic)).pop()
        fut = await producer.send_batch(batch, topic, partition=partition)
        await fut
    finally:
        await producer.stop()
    assert await end_offsets(kafka_bootstrap, topic) == {0: 20}


async def test_request_flows_to_a_result(topics) -> None:
    settings = topics
    request = make_request(1)
    async with ConsumerService(settings):
        await produce_requests(
            settings.kafka_bootstrap_servers, settings.request_topics()["normal"], [request]
        )
        results = await collect(settings.kafka_bootstrap_servers, settings.results_topic, 1)
    assert len(results) == 1
    result = results[0]
    assert result.request_id == request.request_id
    assert result.status is ResultStatus.OK
    assert result.tier == "normal"
    assert "SYM1" in (result.explanation or "")
    # GROUNDING=repair by default: the answer was checked and the verdict travels with it.
    assert result.grounding is not None and result.grounding.grounded
    assert result.grounding.source.value == "model" and result.grounding.attempts == 1
    assert result.request_offset.topic == settings.request_topics()["normal"]
