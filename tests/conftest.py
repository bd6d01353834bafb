"""Shared fixtures: a real Kafka broker for the session and per-test topic prefixes.

The broker is, in order: KAFKA_BOOTSTRAP_SERVERS when set; testcontainers' Kafka when a
Docker engine answers; else our own ``dev-broker`` (real Apache Kafka jars from Maven
Central, KRaft, loopback), started on free ports and stopped at the end of the session.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.config import Settings
from producer_sdk.connection import KafkaConnection


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for the whole test session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from consumer.dev.devbroker import DevBroker, free_port_block

    data_dir = Path(tempfile.mkdtemp(prefix="explainstream-test-broker-"))
    broker = DevBroker(data_dir, port=free_port_block(1))
    address = broker.start(quiet=True)
    try:
        yield address
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_connection(kafka_bootstrap: str) -> KafkaConnection:
    """Connection settings for the session broker."""
    return KafkaConnection(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def make_settings(kafka_bootstrap: str, topic_prefix: str) -> Callable[..., Settings]:
    """Factory for consumer Settings on the session broker with this test's prefix.

    Defaults: fake engine, ephemeral HTTP/metrics ports, one partition per topic, a group
    id unique to the test. Keyword arguments override any field.
    """

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "kafka_topic_prefix": topic_prefix,
            "kafka_group_id": f"{topic_prefix}-group",
            "kafka_partitions": 1,
            "engine": "fake",
            "http_port": 0,
            "metrics_port": 0,
            "http_host": "127.0.0.1",
            "prometheus_enabled": False,
            "commit_interval_ms": 100,
        }
        values.update(overrides)
        return Settings.from_env({}, **values)

    return make


@pytest.fixture
async def topics(make_settings: Callable[..., Settings]) -> AsyncIterator[Settings]:
    """Default test settings with all of the service's topics created."""
    from consumer.kafka.topics import ensure_service_topics

    settings = make_settings()
    await ensure_service_topics(settings)
    yield settings
