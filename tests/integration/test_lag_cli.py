"""`explainstream lag` against a real broker agrees with committed-vs-end read independently."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from consumer.kafka.lag import fetch_lag

pytestmark = pytest.mark.kafka

CREATED_TIERS = ("urgent", "high", "normal")  # "low" is left missing on purpose
PRODUCED = {("urgent", 0): 5, ("urgent", 1): 3, ("high", 0): 7, ("high", 1): 0, ("normal", 0): 4}
COMMITTED = {("urgent", 0): 2, ("urgent", 1): 3, ("high", 0): 7}  # normal: none committed


def run_cli(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", "lag", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def prepare(bootstrap: str, prefix: str, group: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}.requests.{t}", 2, 1) for t in CREATED_TIERS])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for (tier, partition), n in PRODUCED.items():
            for i in range(n):
                await producer.send_and_wait(
                    f"{prefix}.requests.{tier}", f"r{i}".encode(), partition=partition
                )
    finally:
        await producer.stop()
    committer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await committer.start()
    try:
        tps = {
            TopicPartition(f"{prefix}.requests.{tier}", p): OffsetAndMetadata(off, "")
            for (tier, p), off in COMMITTED.items()
        }
        committer.assign(list(tps))
        await committer.commit(tps)
    finally:
        await committer.stop()


async def independent_view(bootstrap: str, prefix: str, group: str) -> dict[tuple[str, int], dict]:
    """Committed and end offsets through a group consumer's own API (not the admin client)."""
    tps = [TopicPartition(f"{prefix}.requests.{t}", p) for t in CREATED_TIERS for p in (0, 1)]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        out = {}
        for tp in tps:
            committed = await reader.committed(tp)
            tier = tp.topic.rsplit(".", 1)[1]
            lag = ends[tp] - (committed if committed is not None else 0)
            out[(tier, tp.partition)] = {"end": ends[tp], "committed": committed, "lag": lag}
        return out
    finally:
        await reader.stop()


@pytest.fixture
async def lagged_group(kafka_bootstrap, topic_prefix):
    group = f"{topic_prefix}-group"
    await prepare(kafka_bootstrap, topic_prefix, group)
    return topic_prefix, group


async def test_lag_json_agrees_with_committed_vs_end(kafka_bootstrap, lagged_group):
    prefix, group = lagged_group
    expected = await independent_view(kafka_bootstrap, prefix, group)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_GROUP_ID": group,
    }
    proc = await asyncio.to_thread(run_cli, env, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["group_id"] == group
    got = {
        (row["tier"], row["partition"]): {
            "end": row["log_end_offset"],
            "committed": row["current_offset"],
            "lag": row["lag"],
        }
        for row in doc["partitions"]
    }
    assert got == expected
    assert doc["tiers"] == {"urgent": 3, "high": 0, "normal": 4}
    assert doc["total_lag"] == 7
    assert doc["missing_topics"] == [f"{prefix}.requests.low"]

    table = await asyncio.to_thread(run_cli, env)
    assert table.returncode == 0, table.stderr
    assert "CURRENT-OFFSET" in table.stdout and "LOG-END-OFFSET" in table.stdout
    first = next(
        line for line in table.stdout.splitlines() if f"{prefix}.requests.urgent  0" in line
    )
    assert first.split() == ["urgent", f"{prefix}.requests.urgent", "0", "2", "5", "3"]


async def test_fetch_lag_reuses_existing_clients(kafka_bootstrap, lagged_group):
    prefix, group = lagged_group
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        topics = {t: f"{prefix}.requests.{t}" for t in ("urgent", "high", "normal", "low")}
        first = await fetch_lag(admin, consumer, group, topics)
        second = await fetch_lag(admin, consumer, group, topics)
    finally:
        await consumer.stop()
        await admin.close()
    assert first == second
    assert first.tier_totals() == {"urgent": 3, "high": 0, "normal": 4}


def test_unreachable_broker_is_one_clear_line_and_nonzero_exit():
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KAFKA_GROUP_ID": "g"}
    proc = run_cli(env, "--json", "--timeout", "5")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("explainstream lag:")
    assert proc.stdout == ""
