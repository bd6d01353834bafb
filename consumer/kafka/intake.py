"""The intake loop: poll Kafka, decode into the scheduler, pause what must wait.

Each pass decides with pure functions (:func:`~consumer.core.flow.desired_pauses`,
:func:`~consumer.core.flow.fetch_budget`), then acts:

* it always calls ``getmany`` — with every partition paused too (they return nothing) —
  because aiokafka counts time outside ``getmany`` as "not polling" and leaves the group
  after ``max.poll.interval.ms``;
* ``max_records`` is the room of the fetchable tier with the least room, so no tier buffer
  ever exceeds its capacity;
* each record's writer schema is resolved (``Codec.resolve``) before decoding; a retriable
  failure (registry unreachable) rewinds the partition to that record and holds it for a
  backoff — nothing is dead-lettered, nothing is committed past it. Undecodable records go
  to the DLQ through a bounded number of sends (with all of them busy, the partition is
  held the same way: the loop itself never blocks, so polling never stops);
* after a pass, idle partitions take the consumer's position (which skips transaction
  markers) as their commit position — only here, never while records are half taken;
* a batch the client itself cannot parse (``getmany`` raises something other than a
  ``KafkaError``) never ends the loop: :mod:`producer_sdk._unreadable` rewinds, reads
  record by record and dead-letters a reference to the one record that fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumer.core.fairshare import buffer_refusal
from consumer.core.flow import desired_pauses, fetch_budget
from consumer.core.offsets import OffsetTracker
from consumer.core.partitions import PartitionBook
from consumer.core.scheduler import TierScheduler
from consumer.kafka.deadletters import DeadLetters
from producer_sdk._unreadable import UnreadableRecords
from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.models import ExplanationRequest

__all__ = ["Intake", "Work"]

log = logging.getLogger("explainstream.intake")


@dataclass(slots=True)
class Work:
    """A decoded request and where it came from."""

    request: ExplanationRequest
    tp: Any
    offset: int
    tier: str
    received_monotonic: float
    key: bytes | None = None
    value: bytes | None = None
    attempts: int = 0
    last_error: str = ""
    term: int | None = None  # the partition's ownership token when it was taken
    traceparent: str | None = None  # the request record's W3C trace context header
    trace: Any = None  # this request's spans while tracing is on (consumer.ops.traces)
    refused: str | None = None  # why a limit answers it REJECTED without inference


def header_text(headers: Any, name: str) -> str | None:
    """The last ``name`` header of a record as text (None when absent or not UTF-8)."""
    found = None
    for key, value in headers or ():
        if key == name and value is not None:
            try:
                found = bytes(value).decode()
            except UnicodeDecodeError:
                found = None
    return found


def decode_backoff_s(retries: int) -> float:
    """Wait before retrying a retriable decode: 0.2 s doubling to 10 s."""
    return min(10.0, 0.2 * 2 ** max(0, retries - 1))


class Intake:
    """Owns the poll loop of the group consumer (see module docstring)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        codec: Codec,
        scheduler: TierScheduler[Work],
        tracker: OffsetTracker,
        book: PartitionBook,
        tiers: tuple[str, ...],
        dead_letters: DeadLetters,
        breaker_open: Callable[[float], bool],
        max_uncommitted: int,
        wake: asyncio.Event,
    ) -> None:
        self.consumer = consumer
        self._codec = codec
        self._scheduler = scheduler
        self._tracker = tracker
        self._book = book
        self._tiers = tiers
        self._dlq = dead_letters
        self._breaker_open = breaker_open
        self._max_uncommitted = max_uncommitted
        self._wake = wake
        self.paused: set[Any] = set()
        self.polls = 0
        self.stopping = False
        self.unreadable = UnreadableRecords(consumer)

    def decide_pauses(self, now: float) -> set[Any]:
        """Which owned partitions must be paused now."""
        tier_of = self._book.tiers()
        return desired_pauses(
            tier_of,
            full_tiers=[i for i in range(len(self._tiers)) if self._scheduler.is_full(i)],
            breaker_open=self._breaker_open(now),
            hold=self._book.held(now) | self._scheduler.crowding(),
            uncommitted={tp: self._tracker.uncommitted(tp) for tp in tier_of},
            max_uncommitted=self._max_uncommitted,
        )

    async def run(self) -> None:
        """Poll until stopped."""
        consumer = self.consumer
        while not self.stopping:
            now = time.monotonic()
            assigned = consumer.assignment()
            # Partitions aiokafka assigned but our callback has not registered yet: paused.
            want = (self.decide_pauses(now) | (assigned - set(self._book.tiers()))) & assigned
            have = consumer.paused()  # aiokafka forgets pauses on rebalance: compare with it
            if want - have:
                consumer.pause(*(want - have))
            if have - want:
                consumer.resume(*(have - want))
            self.paused = want
            tier_of = self._book.tiers()
            fetchable = [tp for tp in assigned - want if tp in tier_of]
            budget = fetch_budget(
                [self._scheduler.fetch_room(i) for i in range(len(self._tiers))],
                {tier_of[tp] for tp in fetchable},
                partition_rooms=[
                    self._max_uncommitted - self._tracker.uncommitted(tp) for tp in fetchable
                ],
            )
            careful = self.unreadable.pick(fetchable)
            try:
                if careful is not None:
                    batch = await consumer.getmany(careful, timeout_ms=100, max_records=1)
                    if not batch.get(careful):
                        self.unreadable.caught_up(careful)
                else:
                    batch = await consumer.getmany(timeout_ms=100, max_records=max(1, budget))
            except KafkaError as exc:
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            except Exception as exc:  # the client could not parse a record it fetched
                self.polls += 1
                if careful is None:
                    await self.unreadable.rewind(fetchable, exc)
                else:
                    await self._dead_letter_unreadable(careful, exc)
                continue
            self.polls += 1
            if batch:
                await self._take(batch)
            await self._sync_positions()

    async def _take(self, batch: dict[TopicPartition, list[Any]]) -> None:
        now = time.monotonic()
        for tp, records in batch.items():
            if not records:
                continue
            if not self._book.accepts(tp, now):
                # Not ours to take now: rewind so nothing fetched is skipped.
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, records[0].offset)
                    self.unreadable.took(tp, records[0].offset)
                continue
            tier_index = self._book.tiers()[tp]
            term = self._book.owner(tp)
            for record in records:
                if self._book.owner(tp) != term:
                    break  # revoked (or revoked and given back) while we awaited
                try:
                    if record.value is not None:  # a tombstone fails in decode: DLQ
                        await self._codec.resolve(record.value)
                        if self._book.owner(tp) != term:
                            break  # a rebalance inside the registry round trip
                    request = self._codec.decode_request(record.value)
                except DecodeError as exc:
                    if self._book.owner(tp) != term:
                        break  # not ours any more: no seek, no dead letter
                    if exc.retriable:
                        self._hold(tp, record.offset, f"cannot be decoded yet ({exc})")
                        break
                    if self._dlq.full():
                        self._hold(tp, record.offset, "waits for a free DLQ send slot")
                        break
                    self._tracker.started(tp, record.offset)
                    self.unreadable.took(tp, record.offset + 1)
                    await self._dlq.submit(tp, record, exc, stage="decode")
                    continue
                self._book.clear_wait(tp)
                self._tracker.started(tp, record.offset)
                self.unreadable.took(tp, record.offset + 1)
                work = Work(
                    request,
                    tp,
                    record.offset,
                    self._tiers[tier_index],
                    now,
                    key=record.key,
                    value=record.value,
                    term=term,
                    traceparent=header_text(record.headers, "traceparent"),
                )
                origin = request.source
                if self._scheduler.admits(tier_index, origin):
                    self._scheduler.push(work, tier_index, now, source=tp, origin=origin)
                else:
                    cap = self._scheduler.max_buffered_per_origin or 0
                    work.refused = buffer_refusal(origin, cap, cap)
                    self._scheduler.push_refused(work, tier_index, now, source=tp, origin=origin)
        self._wake.set()

    async def _dead_letter_unreadable(self, tp: TopicPartition, exc: Exception) -> None:
        reference = self.unreadable.failed(tp)
        if reference is None or self._book.owner(tp) is None:
            return  # first failure at this offset: read it once more
        if self._dlq.full():
            self._hold(tp, reference.offset, "waits for a free DLQ send slot")
            return
        self._tracker.started(tp, reference.offset)
        self.unreadable.took(tp, reference.offset + 1)
        await self._dlq.submit(tp, reference, exc, stage="fetch")

    def _hold(self, tp: TopicPartition, offset: int, why: str) -> None:
        """Rewind ``tp`` to ``offset`` and keep it paused for a backoff."""
        retries, delay = self._book.wait(tp, time.monotonic(), decode_backoff_s)
        if tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)
            self.unreadable.took(tp, offset)
        log.warning(
            "%s:%d@%d %s; retry %d in %.1fs", tp.topic, tp.partition, offset, why, retries, delay
        )

    async def _sync_positions(self) -> None:
        now = time.monotonic()
        for tp in self._book.tiers():
            if not self._book.accepts(tp, now) or self._tracker.outstanding(tp):
                continue
            try:
                position = await asyncio.wait_for(self.consumer.position(tp), 1.0)
            except (KafkaError, TimeoutError) as exc:
                log.debug("position of %s unknown: %s", tp, exc)
                continue
            self._tracker.fetched_up_to(tp, position)
            self.unreadable.took(tp, position)
