"""Partitioning by source: a source stays in its partitions; the client id is the source."""

from __future__ import annotations

import uuid

import pytest

from producer_sdk import ExplanationProducer, KafkaConnection
from producer_sdk._partitioning import source_partition
from schemas.errors import ValidationError

PARTITIONS = list(range(12))


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def test_one_source_lands_in_one_partition_by_default() -> None:
    used = {source_partition("replay-job", rid, PARTITIONS) for rid in _ids(200)}
    assert len(used) == 1


def test_a_spread_confines_a_source_to_that_many_consecutive_partitions() -> None:
    used = {source_partition("replay-job", rid, PARTITIONS, spread=3) for rid in _ids(300)}
    assert len(used) == 3
    start = source_partition("replay-job", _ids(1)[0], PARTITIONS, spread=1)
    assert used == {(start + k) % 12 for k in range(3)}


def test_sources_spread_over_the_partitions() -> None:
    homes = {source_partition(f"service-{i}", "x", PARTITIONS) for i in range(60)}
    assert len(homes) >= 8  # murmur2 of the name, not one shared partition


def test_a_spread_wider_than_the_topic_uses_every_partition_once() -> None:
    used = {source_partition("s", rid, [0, 1], spread=5) for rid in _ids(50)}
    assert used == {0, 1}
    with pytest.raises(ValueError):
        source_partition("s", "r", [])


def test_the_kafka_client_id_is_the_source_unless_the_connection_names_one() -> None:
    assert ExplanationProducer(source="pricing").client_id == "pricing"
    named = KafkaConnection(client_id="ops-tool")
    assert ExplanationProducer(named, source="pricing").client_id == "ops-tool"


def test_unknown_partitioning_is_refused() -> None:
    with pytest.raises(ValidationError):
        ExplanationProducer(partition_by="symbol")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ExplanationProducer(partition_by="source", source_partitions=0)
