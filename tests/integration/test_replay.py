"""Replay republishes exactly the requests of a time window, linked by replay_of."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from consumer.config import Settings
from consumer.edge.replay import plan_window, replay, replayed_request
from consumer.kafka.topics import settings_connection
from producer_sdk import ExplanationProducer
from schemas.codec import Codec
from schemas.models import AnalysisContext, ExplanationRequest
from tests.integration.test_cli_client import cli
from tests.integration.test_sdk import CONTEXT, read_all


def test_plan_window_bounds_by_until_and_captured_end() -> None:
    a, b, c, d = (TopicPartition("t", p) for p in range(4))
    plan = plan_window(
        starts={a: 2, b: None, c: 5, d: 3},
        untils={a: 7, b: None, c: None, d: 3},
        ends={a: 10, b: 4, c: 8, d: 9},
    )
    assert plan == {a: (2, 7), c: (5, 8)}


def test_replayed_request_gets_a_new_id_and_keeps_its_deadline_budget() -> None:
    created = datetime(2024, 1, 1, tzinfo=UTC)
    original = ExplanationRequest(
        context=AnalysisContext(analysis_type="x"),
        created_at=created,
        deadline=created + timedelta(seconds=30),
        reply_to="old.replies",
    )
    now = datetime(2025, 1, 1, tzinfo=UTC)
    copy = replayed_request(original, reply_to="replay.results", now=now)
    assert copy.request_id != original.request_id
    assert copy.replay_of == original.request_id
    assert copy.created_at == now
    assert copy.deadline == now + timedelta(seconds=30)
    assert copy.reply_to == "replay.results"
    assert copy.context == original.context


async def _window(topics: Settings) -> tuple[list[str], list[str], datetime, datetime]:
    """Requests before, inside and after a window; returns (inside ids, urgent inside ids,
    since, until), with since/until taken from the inside records' broker timestamps."""
    conn = settings_connection(topics)
    prefix = topics.kafka_topic_prefix
    async with ExplanationProducer(conn, topic_prefix=prefix) as producer:
        await producer.submit_many([CONTEXT] * 2, priority="normal")
        await asyncio.sleep(0.05)  # the window is defined by timestamps: keep groups apart
        inside = await producer.submit_many([CONTEXT] * 2, priority="normal")
        inside += await producer.submit_many([CONTEXT], priority="high")
        urgent = await producer.submit_many([CONTEXT], priority="urgent")
        garbage = AIOKafkaProducer(**conn.aiokafka_kwargs())
        await garbage.start()
        try:
            await garbage.send_and_wait(topics.topic("requests.high"), b"\x00garbage", key=b"x")
        finally:
            await garbage.stop()
        await asyncio.sleep(0.05)
        await producer.submit_many([CONTEXT] * 2, priority="high")
    records = []
    for tier, count in (("normal", 4), ("high", 4), ("urgent", 1)):
        records += await read_all(conn, topics.topic(f"requests.{tier}"), count)
    by_key = {r.key.decode(): r.timestamp for r in records}
    stamps = [by_key[i] for i in [*inside, *urgent, "x"]]
    since = datetime.fromtimestamp(min(stamps) / 1000, UTC)
    until = datetime.fromtimestamp((max(stamps) + 1) / 1000, UTC)
    return inside, urgent, since, until


@pytest.mark.kafka
async def test_replay_republishes_exactly_the_window(topics: Settings) -> None:
    conn = settings_connection(topics)
    prefix = topics.kafka_topic_prefix
    inside, urgent, since, until = await _window(topics)

    dry = await replay(conn, prefix, since=since, until=until, dry_run=True)
    assert (dry.replayed, dry.undecodable) == (len(inside) + 1, 1)

    report = await replay(
        conn,
        prefix,
        since=since,
        until=until,
        tiers=["normal", "high"],
        results_topic=f"{prefix}.replay-results",
        collect_ids=True,
    )
    assert report.replayed == len(inside)
    assert report.per_tier == {"normal": 2, "high": 1}
    assert report.undecodable == 1
    assert sorted(o for o, _ in report.pairs) == sorted(inside)

    low = await read_all(conn, topics.topic("requests.low"), len(inside))
    replayed = [Codec().decode_request(r.value) for r in low]
    assert sorted(r.replay_of or "" for r in replayed) == sorted(inside)
    assert not {r.request_id for r in replayed} & set(inside)
    assert {r.reply_to for r in replayed} == {f"{prefix}.replay-results"}
    assert [r.key.decode() for r in low] == [r.request_id for r in replayed]
    assert urgent[0] not in {r.replay_of for r in replayed}


@pytest.mark.kafka
async def test_replay_cli(topics: Settings) -> None:
    inside, _, since, until = await _window(topics)
    done = await cli(
        topics,
        "replay",
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
        "--tiers",
        "normal,high",
        "--into",
        "high",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(inside))
    assert "would replay 3" in done.stderr
    done = await cli(
        topics,
        "replay",
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
        "--tiers",
        "urgent",
        "--into",
        "high",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    bad = await cli(topics, "replay", "--since", "yesterday", "--until", until.isoformat())
    assert bad.returncode != 0
    assert "--since 'yesterday' is not an ISO-8601 instant" in bad.stderr
