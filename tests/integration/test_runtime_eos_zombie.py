"""Exactly-once against a zombie: a consumer frozen past the session timeout (SIGSTOP, as a
GC pause or VM stall would) and thawed after another member took its partitions must not
make a single duplicate visible to a read_committed reader (issue 9, defect 3)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.config import Settings
from consumer.kafka.topics import ensure_service_topics
from consumer.runtime.service import ConsumerService
from tests.integration.helpers import (
    CODEC,
    collect,
    make_request,
    produce_requests,
    wait_committed,
    wait_until,
)
from tests.integration.test_consumer_core import _consume_process

pytestmark = pytest.mark.kafka


async def _read_committed_results(bootstrap: str, topic: str) -> list[str]:
    """Every committed result's request_id, up to the last stable offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # the LSO for a read_committed consumer
        ids: list[str] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids.extend(CODEC.decode_result(r.value).request_id for r in records)
        return ids
    finally:
        await consumer.stop()


async def test_a_thawed_zombie_never_commits_after_its_partitions_moved(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        kafka_partitions=2,
        fake_latency_ms=10,
        max_concurrent_requests=4,
        delivery="exactly-once",
    )
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    requests = [make_request(i) for i in range(1500)]
    await produce_requests(boot, settings.request_topics()["normal"], requests)
    zombie = _consume_process(settings)
    frozen = False
    try:
        await collect(boot, settings.results_topic, 100, timeout_s=90, exact=False)
        zombie.send_signal(signal.SIGSTOP)  # holds results of in-flight transactions
        frozen = True
        successor_settings = settings.model_copy(update={"consumer_id": "successor"})
        async with ConsumerService(successor_settings) as successor:
            # The group expels the frozen member after its session timeout (6 s).
            await wait_until(lambda: len(successor.assigned()) == 4 * 2, timeout_s=60)
            before = len(await _read_committed_results(boot, settings.results_topic))
            await wait_until(lambda: successor._counts["OK"] >= 50, timeout_s=60)
            zombie.send_signal(signal.SIGCONT)
            frozen = False
            await collect(boot, settings.results_topic, 1500, timeout_s=120)
            await wait_committed(settings, "normal", timeout_s=120)
        zombie.send_signal(signal.SIGTERM)
        await asyncio.to_thread(zombie.wait, 60)
    finally:
        if frozen:
            zombie.send_signal(signal.SIGCONT)
        if zombie.poll() is None:
            os.kill(zombie.pid, signal.SIGKILL)
            zombie.wait()
    ids = await _read_committed_results(boot, settings.results_topic)
    duplicates = len(ids) - len(set(ids))
    log = zombie.stderr.read().decode(errors="replace") if zombie.stderr else ""
    # 0 duplicates would also hold if the thawed zombie never tried to write: its own log
    # shows that it did, and that the broker fenced it.
    fenced = log.count("its producer was fenced")
    assert fenced >= 1, log[-3000:]
    assert before >= 100
    assert set(ids) == {r.request_id for r in requests}, "a request was never answered"
    assert duplicates == 0, f"{duplicates} duplicate results visible to read_committed"
