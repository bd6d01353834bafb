"""KEDA's numbers on a real backlog: for a consumer group with work queued on the real broker,
the metric each of the chart's Kafka triggers would report (KEDA's formula, keda_scaler.py,
fed with the offsets KEDA reads: the group's committed offsets and the latest offsets) equals
``explainstream lag`` before KEDA's cap, and each tier asks for the replicas below."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from consumer.config import TIERS, Settings
from consumer.kafka.topics import ensure_service_topics
from tests.deploy import validators as v
from tests.deploy.keda_scaler import INVALID_OFFSET, desired_replicas, trigger_metric
from tests.integration.helpers import commit_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.deploy]

# tier -> partition -> (records produced, offset the group committed or None)
BACKLOG: dict[str, dict[int, tuple[int, int | None]]] = {
    # 15 + 6 lagging on 2 partitions: partition 1 has no commit and its first 4 records are
    # deleted (as retention would), so both count it from its log start.
    "urgent": {0: (20, 5), 1: (10, None), 2: (10, 10)},
    "high": {0: (0, None), 1: (0, None), 2: (0, None)},  # idle
    "normal": {0: (30, 10), 1: (0, None), 2: (0, None)},  # 20 on one partition
    "low": {0: (0, None), 1: (1200, None), 2: (0, None)},  # a skewed replay: 1200 on one
}


async def _produce_backlog(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        sends = [
            await producer.send(settings.request_topics()[tier], b"x", partition=p)
            for tier, parts in BACKLOG.items()
            for p, (count, _) in parts.items()
            for _ in range(count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    commits = {
        TopicPartition(settings.request_topics()[tier], p): offset
        for tier, parts in BACKLOG.items()
        for p, (_, offset) in parts.items()
        if offset is not None
    }
    await commit_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, commits)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(settings.request_topics()["urgent"], 1): RecordsToDelete(4)}
        )
    finally:
        await admin.close()


async def _offsets_as_keda_reads_them(
    settings: Settings,
) -> dict[str, dict[int, tuple[int, int, int]]]:
    """The group's committed offsets (OffsetFetch), earliest and latest offsets (ListOffsets)."""
    boot = settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    consumer = AIOKafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.kafka_group_id)
        out: dict[str, dict[int, tuple[int, int, int]]] = {}
        for tier, topic in settings.request_topics().items():
            tps = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
            earliest = await consumer.beginning_offsets(tps)
            latest = await consumer.end_offsets(tps)
            out[tier] = {
                tp.partition: (
                    committed[tp].offset if tp in committed else INVALID_OFFSET,
                    earliest[tp],
                    latest[tp],
                )
                for tp in tps
            }
        return out
    finally:
        await consumer.stop()
        await admin.close()


def _chart_triggers(settings: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    bootstrap = settings.kafka_bootstrap_servers.replace(",", r"\,")  # helm --set lists
    rendered = v.helm_template(
        f"config.KAFKA_TOPIC_PREFIX={settings.kafka_topic_prefix}",
        f"config.KAFKA_GROUP_ID={settings.kafka_group_id}",
        f"config.KAFKA_PARTITIONS={settings.kafka_partitions}",
        f"config.KAFKA_BOOTSTRAP_SERVERS={bootstrap}",
    )
    assert rendered.returncode == 0, rendered.output
    [so] = [d for d in v.documents(rendered.stdout) if d["kind"] == "ScaledObject"]
    triggers = {t["name"]: t["metadata"] for t in so["spec"]["triggers"] if t["type"] == "kafka"}
    return triggers, so["spec"]


def _lag_cli(settings: Settings) -> dict[str, Any]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "KAFKA_GROUP_ID": settings.kafka_group_id,
    }
    result = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "lag", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_kedas_metric_equals_explainstream_lag_and_each_tier_asks_its_replicas(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(kafka_partitions=3)
    await ensure_service_topics(settings)
    await _produce_backlog(settings)
    offsets = await _offsets_as_keda_reads_them(settings)
    triggers, spec = _chart_triggers(settings)
    lag = await asyncio.to_thread(_lag_cli, settings)

    metrics = {}
    for tier in TIERS:
        meta = triggers[tier]
        assert meta["topic"] == settings.request_topics()[tier]
        assert meta["consumerGroup"] == settings.kafka_group_id
        metrics[tier] = trigger_metric(
            offsets[tier],
            lag_threshold=int(meta["lagThreshold"]),
            activation_lag_threshold=int(meta["activationLagThreshold"]),
            allow_idle_consumers=meta["allowIdleConsumers"] == "true",
            limit_to_partitions_with_lag=meta["limitToPartitionsWithLag"] == "true",
            offset_reset_policy=meta["offsetResetPolicy"],
        )
    rows = [
        f"{t:<7} lag {m.lag:>5}  (explainstream lag {lag['tiers'][t]:>5})  "
        f"KEDA metric {m.metric:>5}  threshold {triggers[t]['lagThreshold']:>4}  "
        f"asks {m.replicas}  active {m.active}"
        for t, m in metrics.items()
    ]
    print("\n" + "\n".join(rows))

    # Before KEDA's cap, its lag is exactly explainstream lag, tier by tier and partition by
    # partition (both count a partition without a commit from its log start).
    for tier in TIERS:
        assert metrics[tier].lag == lag["tiers"][tier]
    assert offsets["urgent"][1] == (INVALID_OFFSET, 4, 10)
    assert metrics["urgent"].lag == 21
    by_partition = {(row["tier"], row["partition"]): row["lag"] for row in lag["partitions"]}
    for tier, parts in offsets.items():
        for p, (committed, earliest, latest) in parts.items():
            expected = latest - (earliest if committed == INVALID_OFFSET else committed)
            assert by_partition[(tier, p)] == expected
    assert sum(m.lag for m in metrics.values()) == lag["total_lag"]

    # What each tier's trigger asks for, with the chart's thresholds (20, 20, 100, 500):
    asks = {t: (m.metric, m.replicas, m.active) for t, m in metrics.items()}
    assert asks == {
        "urgent": (21, 2, True),  # lag 21 / 20 -> 2 (the cap, 3 partitions x 20, not hit)
        "high": (0, 0, False),
        "normal": (20, 1, True),  # 20 / 100 -> 1
        "low": (500, 1, True),  # 1200 on one partition: limitToPartitionsWithLag caps at 1
    }
    replicas = desired_replicas(
        [m.replicas for m in metrics.values()],
        min_replicas=spec["minReplicaCount"],
        max_replicas=spec["maxReplicaCount"],
    )
    assert replicas == 2, "the HPA follows the largest ask (urgent)"
