"""Records the Kafka client itself cannot parse never stop the group (real broker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from consumer.config import Settings
from consumer.kafka.topics import ensure_service_topics
from consumer.runtime.service import ConsumerService
from schemas.models import ResultStatus
from tests.hostile_wire import send_with_hostile_header, use_python_builder
from tests.integration.helpers import CODEC, collect, make_request

pytestmark = pytest.mark.kafka


def offsets_of(dlq: list[Any]) -> list[int]:
    return sorted(int(dict(r.headers)["dlq.original.offset"]) for r in dlq)


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_rest_answered(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_python_builder(monkeypatch)
    settings = make_settings()
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    topic = settings.request_topics()["normal"]
    requests = [make_request(i) for i in range(20)]
    hostile = requests[10]
    await send_with_hostile_header(
        {"bootstrap_servers": boot},
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
    headers = dict(letter.headers)
    assert offsets_of(dlq) == [10]
    assert headers["dlq.stage"] == b"fetch"
    assert headers["dlq.error.class"] == b"UnicodeDecodeError"
    assert letter.value in (b"", None)  # a reference: its bytes cannot be read


async def test_a_batch_mixing_valid_and_unparseable_records_loses_nothing(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client parses a batch record by record: what follows an unparseable record in
    the same producer batch cannot be read through it either. Each such record is
    dead-lettered as a reference; every offset ends answered or in the DLQ."""
    use_python_builder(monkeypatch)
    settings = make_settings()
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    requests = [make_request(i) for i in range(7)]
    await send_with_hostile_header(
        {"bootstrap_servers": boot},
        settings.request_topics()["normal"],
        [(r.request_id.encode(), CODEC.encode_request(r), i == 3) for i, r in enumerate(requests)],
        one_batch=True,
    )
    async with ConsumerService(settings):
        results = await collect(boot, settings.results_topic, 3, timeout_s=60)
        dlq = await collect(boot, settings.dlq_topic, 4, timeout_s=60, decode=None)
    assert {r.request_id for r in results} == {r.request_id for r in requests[:3]}
    assert offsets_of(dlq) == [3, 4, 5, 6]
    assert all(dict(r.headers)["dlq.stage"] == b"fetch" for r in dlq)


async def test_a_compressed_bomb_is_dead_lettered_as_a_reference_without_inflating_it(
    make_settings: Callable[..., Settings],
) -> None:
    """70 MB of zeros is ~70 KB of gzip: under every broker limit. aiokafka inflated it
    whole; the codec then refused it as too large and its DLQ copy (value + headers) was
    over the DLQ producer's max request size: retried forever, the partition stalled."""
    from producer_sdk._inflate import MAX_INFLATED_BATCH_BYTES

    settings = make_settings()
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    topic = settings.request_topics()["normal"]
    before, after = make_request(1), make_request(2)
    bomb = b"\x00" * (MAX_INFLATED_BATCH_BYTES + 6 * 2**20)
    producer = AIOKafkaProducer(
        bootstrap_servers=boot, acks="all", compression_type="gzip", max_request_size=2**27
    )
    await producer.start()
    try:
        for key, value in ((b"a", CODEC.encode_request(before)), (b"bomb", bomb)):
            await (await producer.send(topic, value, key=key, partition=0))
        await (await producer.send(topic, CODEC.encode_request(after), key=b"b", partition=0))
    finally:
        await producer.stop()
    del bomb
    async with ConsumerService(settings):
        results = await collect(boot, settings.results_topic, 2, timeout_s=60)
        dlq = await collect(boot, settings.dlq_topic, 1, timeout_s=60, decode=None)
    assert {r.request_id for r in results} == {before.request_id, after.request_id}
    (letter,) = dlq
    headers = dict(letter.headers)
    assert offsets_of(dlq) == [1]
    assert headers["dlq.error.class"] == b"InflatedTooLarge"
    assert letter.value in (b"", None)
