"""Scenario 4: a 3-node cluster (replication 3, min.insync.replicas 2) loses the leader of
the partition being consumed to SIGKILL, mid-run; and, on the same cluster, a consumer
whose group-coordinator cache is stale (a live broker answers NOT_COORDINATOR)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError

from consumer.config import Settings
from consumer.dev.devbroker import DevBroker
from consumer.kafka.committed import group_offsets
from consumer.kafka.group import Listener, make_consumer, seek_to_committed, start_consumer
from tests.integration.helpers import commit_offsets
from tests.reliability.brokers import dedicated_broker
from tests.reliability.conftest import ScenarioFactory, alo_bound


@pytest.fixture(scope="module")
def cluster() -> Iterator[DevBroker]:
    with dedicated_broker("cluster", brokers=3) as broker:
        yield broker


async def _leader(bootstrap: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        leader = consumer._client.cluster.leader_for_partition(tp)
        assert leader is not None and leader >= 1, f"no leader for {tp}"
        return int(leader)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_leader_of_a_busy_partition_killed(
    scenario: ScenarioFactory, cluster: DevBroker, delivery: str
) -> None:
    sc = await scenario(
        "4 3 brokers, RF 3: SIGKILL the busy leader",
        delivery,
        bootstrap=cluster.bootstrap,
        kafka_replication_factor=3,
        fake_latency_ms=50,
    )
    await sc.load(600)
    proc = sc.consumer("consumer")
    await sc.history.wait_count(60)
    node_id = await _leader(cluster.bootstrap, TopicPartition(sc.topic, 0))
    await sc.history.mark_fault(sc.settings.kafka_group_id)
    cluster.kill_node(node_id - 1)
    killed_at = time.monotonic()
    n = await sc.history.count_answered()
    await sc.history.wait_count(n + 1, timeout_s=120)
    resumed = time.monotonic() - killed_at
    try:
        await sc.history.wait_answered(timeout_s=240)
        assert proc.alive(), proc.log()[-3000:]
        new_leader = await _leader(cluster.bootstrap, TopicPartition(sc.topic, 0))
        assert new_leader != node_id
    finally:
        await asyncio.to_thread(cluster.restart_node, node_id - 1)
    bound = 0 if delivery == "exactly-once" else alo_bound(sc.settings)
    await sc.finish(
        bound,
        f"leader (node {node_id}) killed; answering again after {resumed:.0f} s "
        f"on leader {new_leader}; same process throughout",
        resumed_s=round(resumed, 1),
    )


async def test_a_stale_coordinator_never_resets_a_partition_to_its_beginning(
    cluster: DevBroker,
) -> None:
    """Defect (issue 9): an OffsetFetch answered by a broker that is not (or no longer) the
    group coordinator carries only a group-level NOT_COORDINATOR; aiokafka read that as "no
    committed offset" and the consumer re-read the partition from offset 0. Here the real
    cluster answers it: the coordinator cache is made stale the moment the partition is
    assigned, before the consumer reads where to start."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env(
        {}, kafka_bootstrap_servers=cluster.bootstrap, kafka_group_id=f"{prefix}-group"
    )
    topic = f"{prefix}.stale-coordinator"
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 3)])
    finally:
        await admin.close()
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, str(i).encode(), partition=0)
    finally:
        await producer.stop()
    await commit_offsets(cluster.bootstrap, settings.kafka_group_id, {tp: 7})

    consumer = make_consumer(settings, {"bootstrap_servers": cluster.bootstrap})
    stale: list[int] = []
    seen: list[set[TopicPartition]] = []

    async def on_assigned(tps: set[TopicPartition]) -> None:
        coordinator = consumer._coordinator
        real = coordinator.coordinator_id
        # Synchronously, before aiokafka's own committed-offset refresh gets to run.
        coordinator.coordinator_id = next(n for n in (1, 2, 3) if n != real)
        stale.append(coordinator.coordinator_id)
        seen.append(await seek_to_committed(consumer, tps, timeout_s=30))

    async def on_revoked(tps: set[TopicPartition]) -> None:
        return None

    await start_consumer(consumer, [topic], Listener(on_assigned, on_revoked), cluster.bootstrap)
    try:
        first: int | None = None
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            offsets = [r.offset for records in batch.values() for r in records]
            first = min(offsets) if offsets else None
        assert stale, "the partition was never assigned"
        assert seen[0] == set(), f"committed offset reported unreadable: {seen[0]}"
        assert first == 7, f"started at offset {first}, not at the committed 7"
        assert await consumer.committed(tp) == 7
    finally:
        await consumer.stop()

    # The lag report's read (admin client) of the same stale answer: an error, not "none".
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        assert await group_offsets(admin, settings.kafka_group_id, [tp]) == {tp: 7}
        with pytest.raises(GroupCoordinatorNotAvailableError):
            await group_offsets(admin, settings.kafka_group_id, [tp], coordinator_id=stale[0])
    finally:
        await admin.close()
