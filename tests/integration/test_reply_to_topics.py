"""A request's reply_to never creates a topic nor grows the producer's metadata (real broker)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from consumer.config import Settings
from consumer.kafka.sinks import MAX_KNOWN_TOPICS, topic_writable

pytestmark = pytest.mark.kafka


async def test_unknown_reply_topics_are_refused_without_touching_the_metadata(
    topics: Settings,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=topics.kafka_bootstrap_servers)
    await producer.start()
    try:
        known: dict[str, None] = {}
        assert await topic_writable(producer, topics.results_topic, 5.0, known)
        tracked = set(producer.client._topics)
        for _ in range(30):
            name = f"{topics.kafka_topic_prefix}.reply-{uuid.uuid4()}"
            assert not await topic_writable(producer, name, 5.0, known)
        # partitions_for() used to add every asked name to the producer's topic set, which
        # every metadata refresh then requests again (and a broker with auto-create on
        # creates).
        assert set(producer.client._topics) == tracked
        assert list(known) == [topics.results_topic]
    finally:
        await producer.stop()


def test_the_known_topics_are_bounded() -> None:
    assert MAX_KNOWN_TOPICS == 1024
