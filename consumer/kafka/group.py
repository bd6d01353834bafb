"""Group membership: the consumer client, the rebalance listener, positioning on assignment."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumer.config import Settings
from consumer.kafka.committed import guard_offset_fetches
from producer_sdk._inflate import bound_decompression
from schemas.errors import KafkaUnavailable

__all__ = ["Listener", "make_consumer", "seek_to_committed", "start_consumer"]

log = logging.getLogger("explainstream.group")

Hook = Callable[[set[TopicPartition]], Awaitable[None]]


class Listener(ConsumerRebalanceListener):
    """Forwards aiokafka's rebalance callbacks to the service."""

    def __init__(self, on_assigned: Hook, on_revoked: Hook) -> None:
        self._assigned = on_assigned
        self._revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._assigned(set(assigned))


def make_consumer(settings: Settings, conn: dict[str, Any]) -> AIOKafkaConsumer:
    """The service's group consumer: manual commits, read_committed, bounded fetches
    (compressed and inflated: see :mod:`producer_sdk._inflate`)."""
    bound_decompression()
    s = settings
    extra: dict[str, Any] = {}
    if s.kafka_group_instance_id:
        extra["group_instance_id"] = s.kafka_group_instance_id
    return AIOKafkaConsumer(
        **conn,
        group_id=s.kafka_group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_interval_ms=s.kafka_max_poll_interval_ms,
        session_timeout_ms=s.kafka_session_timeout_ms,
        rebalance_timeout_ms=s.rebalance_timeout_ms(),
        heartbeat_interval_ms=min(3000, s.kafka_session_timeout_ms // 3),
        max_partition_fetch_bytes=256 * 1024,
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        **extra,
    )


async def start_consumer(
    consumer: AIOKafkaConsumer, topics: list[str], listener: Listener, bootstrap: str
) -> None:
    """Connect and subscribe; KafkaUnavailable when the cluster cannot be reached.

    Committed-offset reads are guarded before the first assignment can happen, so a
    coordinator that is loading or has moved never reads as "no committed offset".
    """
    try:
        await consumer.start()
    except KafkaError as exc:
        raise KafkaUnavailable(f"Kafka at {bootstrap}: {exc}") from exc
    guard_offset_fetches(consumer)
    consumer.subscribe(topics, listener=listener)


async def seek_to_committed(
    consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition], timeout_s: float
) -> set[TopicPartition]:
    """Position each partition at its committed offset, read now; return those whose
    committed offset could not be read within ``timeout_s`` (the caller holds them).

    Called after the sink fenced the previous owner, so the offset read here is final; the
    group's own offset refresh may have run before that fence. A read that keeps failing
    (coordinator loading or moving, retried inside aiokafka) must not fall back to a guess:
    a partition fetched from the wrong place re-reads acknowledged work, or skips some.
    """
    unread: set[TopicPartition] = set()

    async def read(tp: TopicPartition) -> None:
        try:
            offset = await asyncio.wait_for(consumer.committed(tp), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning("committed offset of %s unreadable (%r)", tp, exc)
            unread.add(tp)
            return
        if tp not in consumer.assignment():
            return
        if offset is None:
            # The group never committed here (a guarded read): start where the policy says.
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)

    await asyncio.gather(*(read(tp) for tp in tps))
    return unread
