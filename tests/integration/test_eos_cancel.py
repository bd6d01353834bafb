"""Exactly-once: a commit round cut off by cancellation never writes its records twice.

At shutdown the service cancels its commit loop, then makes a final commit. A round
cancelled while its EndTxn was on the wire used to leave its records held although the
broker committed them; the final commit then sent them again in a new transaction, and a
``read_committed`` reader saw each result twice (seen in reliability scenario 2, exactly
once: eight identical copies from the member that was terminated).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka import TopicPartition

from consumer.config import Settings
from consumer.core.offsets import OffsetTracker
from consumer.kafka.eos import TransactionalSink
from consumer.kafka.topics import ensure_service_topics
from tests.integration.helpers import read_to_end


async def test_a_round_cancelled_inside_its_end_txn_is_written_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(delivery="exactly-once")
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    tp = TopicPartition(settings.request_topics()["normal"], 0)
    sink = TransactionalSink(
        {"bootstrap_servers": boot}, group_id=settings.kafka_group_id, publish_timeout_s=10
    )
    assert await sink.open({tp}) == {tp}
    tracker = OffsetTracker()
    values = [f"result {n}".encode() for n in range(8)]
    for offset, value in enumerate(values):
        tracker.started(tp, offset)
        await sink.put(tp, offset, settings.results_topic, b"k", value, [])
        tracker.done(tp, offset)
    producer = sink._parts[tp].producer
    ending = asyncio.Event()
    end_txn = producer.commit_transaction

    async def commit_transaction() -> None:
        ending.set()  # the caller is cancelled from here on, with EndTxn under way
        await end_txn()

    producer.commit_transaction = commit_transaction  # type: ignore[method-assign]
    loop_round = asyncio.create_task(sink.commit(tracker, {tp}))
    await ending.wait()
    loop_round.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop_round
    await sink.commit(tracker, {tp})  # the final commit at shutdown
    await sink.close()
    written = await read_to_end(boot, settings.results_topic)
    assert sorted(r.value for r in written) == sorted(values)
    assert tracker.to_commit([tp]) == {}  # offset 8 committed with them
