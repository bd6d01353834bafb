"""DELIVERY=exactly-once: results and consumed offsets in one Kafka transaction.

aiokafka's transactions predate KIP-447 (TxnOffsetCommit v0 carries no group generation),
so a zombie consumer cannot be fenced through the group. We use the model Kafka used before
KIP-447: one transactional producer per *input partition*, ``transactional.id =
explainstream-<group>-<topic>-<partition>``. Whoever owns a partition next initialises the
same transactional id, which aborts the previous owner's open transaction and fences its
producer. Hence, for consumers that read results with ``isolation_level=read_committed``:

* every request offset is committed in the same transaction as its result (or DLQ record);
* a crash before commit aborts both, and the request is processed again: no duplicate is
  ever visible, no result is lost;
* results of a partition become visible in offset order, at commit intervals
  (COMMIT_INTERVAL_MS), not one by one.

Results of requests that completed out of order wait until they join the contiguous prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.core.offsets import OffsetTracker

__all__ = ["TransactionalPublisher"]

log = logging.getLogger("explainstream.eos")

_Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass
class _Partition:
    producer: AIOKafkaProducer | None = None
    pending: dict[int, _Record] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TransactionalPublisher:
    """Holds finished records per input partition and commits them with their offsets."""

    def __init__(
        self,
        conn_kwargs: dict[str, Any],
        *,
        group_id: str,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._conn = conn_kwargs
        self._group = group_id
        self._parts: dict[Hashable, _Partition] = {}
        self._on_commit = on_commit

    def transactional_id(self, tp: TopicPartition) -> str:
        """Stable id per input partition (see module docstring)."""
        return f"explainstream-{self._group}-{tp.topic}-{tp.partition}"

    async def add(
        self,
        tp: TopicPartition,
        offset: int,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Hold one output record for the request at ``tp``/``offset``."""
        self._parts.setdefault(tp, _Partition()).pending[offset] = (topic, key, value, headers)

    async def _producer(self, tp: TopicPartition, part: _Partition) -> AIOKafkaProducer:
        if part.producer is None:
            producer = AIOKafkaProducer(
                **self._conn,
                transactional_id=self.transactional_id(tp),
                acks="all",
                enable_idempotence=True,
            )
            await producer.start()  # init_transactions: fences the previous owner
            part.producer = producer
        return part.producer

    async def flush(self, tracker: OffsetTracker, tps: set[TopicPartition]) -> None:
        """Commit, per partition, the held records below the safe position plus the offset."""
        for tp in tps:
            part = self._parts.setdefault(tp, _Partition())
            async with part.lock:
                target = tracker.to_commit([tp]).get(tp)
                if target is None:
                    continue
                ready = sorted(o for o in part.pending if o < target)
                started = time.monotonic()
                producer = await self._producer(tp, part)
                try:
                    async with producer.transaction():
                        for offset in ready:
                            topic, key, value, headers = part.pending[offset]
                            await producer.send(topic, value, key=key, headers=headers)
                        await producer.send_offsets_to_transaction({tp: target}, self._group)
                except KafkaError as exc:
                    # The transaction was aborted: records stay held, offsets uncommitted.
                    log.warning("transaction for %s failed: %s", tp, exc)
                    await self._reset(part)
                    continue
                for offset in ready:
                    del part.pending[offset]
                tracker.committed({tp: target})
                if self._on_commit is not None:
                    self._on_commit(time.monotonic() - started)

    async def _reset(self, part: _Partition) -> None:
        if part.producer is not None:
            with contextlib.suppress(Exception):
                await part.producer.stop()
            part.producer = None

    async def release(self, tps: set[TopicPartition]) -> None:
        """Drop revoked partitions: their producers stop, unflushed records are discarded."""
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                await self._reset(part)

    async def close(self) -> None:
        """Stop every producer."""
        for part in self._parts.values():
            await self._reset(part)
        self._parts.clear()
