"""``partition_by="source"`` and ``produce --partition-by source`` on the real broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.config import Settings
from consumer.kafka.topics import settings_connection
from producer_sdk import ExplanationProducer
from schemas.codec import Codec
from tests.integration.helpers import service_topics
from tests.integration.test_cli_client import cli
from tests.integration.test_sdk import CONTEXT, read_all

pytestmark = pytest.mark.kafka


async def test_each_source_stays_in_its_partition_keyed_by_request_id(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(make_settings(kafka_partitions=6))
    conn = settings_connection(settings)
    sent: dict[str, list[str]] = {}
    for source in ("replay-job", "pricing", "risk"):
        async with ExplanationProducer(
            conn, topic_prefix=settings.kafka_topic_prefix, source=source, partition_by="source"
        ) as producer:
            sent[source] = await producer.submit_many([CONTEXT] * 20)
    records = await read_all(conn, settings.topic("requests.normal"), 60)
    partitions: dict[str, set[int]] = {}
    for record in records:
        request = Codec().decode_request(record.value)
        assert record.key == request.request_id.encode()  # the key contract is unchanged
        partitions.setdefault(request.source, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert sorted(len(ids) for ids in sent.values()) == [20, 20, 20]


async def test_produce_partition_by_source_on_the_command_line(
    make_settings: Callable[..., Settings],
) -> None:
    import json

    settings = await service_topics(make_settings(kafka_partitions=6))
    line = json.dumps(CONTEXT) + "\n"
    done = await cli(
        settings,
        "produce",
        "--file",
        "-",
        "--source",
        "replay-job",
        "--partition-by",
        "source",
        "--source-partitions",
        "2",
        stdin=line * 30,
    )
    assert done.returncode == 0, done.stderr
    records = await read_all(settings_connection(settings), settings.topic("requests.normal"), 30)
    assert len({r.partition for r in records}) == 2
