"""Scenario 4: a 3-node cluster (replication 3, min.insync.replicas 2) loses the leader of
the partition being consumed to SIGKILL, mid-run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.dev.devbroker import DevBroker
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
    bound = 0 if delivery == "exactly-once" else alo_bound(sc.settings, 1)
    await sc.finish(
        bound,
        f"leader (node {node_id}) killed; answering again after {resumed:.0f} s "
        f"on leader {new_leader}; same process throughout",
        resumed_s=round(resumed, 1),
    )
