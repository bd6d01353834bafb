"""The aiokafka seam: client construction and error translation in one place."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from producer_sdk._diagnose import diagnosed
from producer_sdk._inflate import bound_decompression
from producer_sdk.connection import KafkaConnection
from schemas.errors import KafkaUnavailable

T = TypeVar("T")


def kafka_error(conn: KafkaConnection, what: str, exc: BaseException) -> KafkaUnavailable:
    """Our error for an aiokafka failure while doing ``what``."""
    detail = str(exc) or type(exc).__name__
    return KafkaUnavailable(f"{what} on Kafka at {conn.bootstrap_servers}: {detail}")


async def guarded(conn: KafkaConnection, what: str, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, translating aiokafka errors to KafkaUnavailable."""
    try:
        return await awaitable
    except KafkaError as exc:
        raise kafka_error(conn, what, exc) from exc


def make_producer(conn: KafkaConnection, **options: Any) -> AIOKafkaProducer:
    """An idempotent producer: acks=all, enable_idempotence, retries within the timeout."""
    kwargs: dict[str, Any] = {
        **conn.aiokafka_kwargs(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
    }
    kwargs.update(options)
    return AIOKafkaProducer(**kwargs)


def make_consumer(conn: KafkaConnection, **options: Any) -> AIOKafkaConsumer:
    """A consumer reading committed data only, with compressed batches inflated to a cap
    (:mod:`producer_sdk._inflate`)."""
    bound_decompression()
    kwargs: dict[str, Any] = {
        **conn.aiokafka_kwargs(),
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
    }
    kwargs.update(options)
    return AIOKafkaConsumer(**kwargs)


async def start_or_close(conn: KafkaConnection, what: str, client: Any) -> None:
    """Start an aiokafka client; on failure close it and raise KafkaUnavailable."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        await asyncio.shield(client.stop())
        raise await diagnosed(conn, kafka_error(conn, what, exc)) from exc


def warn_unclosed(obj: object) -> None:
    """Emit the ResourceWarning for a client garbage-collected while still started."""
    warnings.warn(
        f"unclosed {type(obj).__name__}: use 'async with' or call close()",
        ResourceWarning,
        stacklevel=2,
        source=obj,
    )


async def partitions_of(conn: KafkaConnection, consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """Partition numbers of ``topic`` from fresh metadata; KafkaUnavailable when it is missing.

    ``consumer.kafka.topics()`` fetches metadata without updating the consumer's cluster view, so
    the fresh metadata object is queried directly (the one place we reach into aiokafka).
    """
    for attempt in range(5):
        cluster = await guarded(conn, "reading metadata", consumer._client.fetch_all_metadata())
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        await asyncio.sleep(0.1 * (attempt + 1))
    raise KafkaUnavailable(
        f"topic {topic} does not exist on {conn.bootstrap_servers} "
        "(create it, e.g. with 'explainstream topics create')"
    )
