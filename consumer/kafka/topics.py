"""Topic names and idempotent creation."""

from __future__ import annotations

import argparse
import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from consumer.config import TIERS, Settings
from producer_sdk.connection import KafkaConnection
from schemas.errors import KafkaUnavailable

__all__ = ["all_topics", "ensure_service_topics", "ensure_topics", "register"]


def all_topics(prefix: str) -> list[str]:
    """Every topic the service uses: four tiers, results, DLQ."""
    return [*(f"{prefix}.requests.{t}" for t in TIERS), f"{prefix}.results", f"{prefix}.dlq"]


async def ensure_topics(
    conn: KafkaConnection,
    names: list[str],
    *,
    partitions: int = 3,
    replication_factor: int = 1,
) -> list[str]:
    """Create the missing topics among ``names``; returns those created."""
    admin = AIOKafkaAdminClient(**conn.aiokafka_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            new = [NewTopic(n, partitions, replication_factor) for n in missing]
            try:
                resp = await admin.create_topics(new)
            except TopicAlreadyExistsError:
                return []
            created = []
            for topic, code, *_ in resp.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != TopicAlreadyExistsError.errno:
                    raise KafkaUnavailable(f"creating topic {topic} failed with error {code}")
            await _wait_for_metadata(admin, missing)
            return created
        return []
    except KafkaError as exc:
        raise KafkaUnavailable(f"Kafka at {conn.bootstrap_servers}: {exc}") from exc
    finally:
        await admin.close()


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        desc = await admin.describe_topics(names)
        if all(d.get("error_code", 0) == 0 and d.get("partitions") for d in desc):
            return
        await asyncio.sleep(0.1)


async def ensure_service_topics(settings: Settings) -> list[str]:
    """Create the service's topics (prefix, partitions, replication from ``settings``)."""
    return await ensure_topics(
        settings_connection(settings),
        all_topics(settings.kafka_topic_prefix),
        partitions=settings.kafka_partitions,
        replication_factor=settings.kafka_replication_factor,
    )


def _cmd(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    names = all_topics(settings.kafka_topic_prefix)
    created = asyncio.run(ensure_service_topics(settings))
    for name in names:
        print(f"{name}\t{'created' if name in created else 'exists'}")
    return 0


def settings_connection(settings: Settings) -> KafkaConnection:
    """KafkaConnection from a consumer Settings object."""
    return settings.kafka_connection()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``topics create``."""
    p = subparsers.add_parser("topics", help="manage the service's topics")
    sub = p.add_subparsers(dest="topics_action", required=True)
    create = sub.add_parser("create", help="create all topics idempotently")
    create.set_defaults(func=_cmd)
