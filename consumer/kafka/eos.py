"""DELIVERY=exactly-once: results and consumed offsets in one Kafka transaction.

aiokafka's transactions predate KIP-447 (TxnOffsetCommit v0 carries no group generation),
so a zombie consumer cannot be fenced through the group. We use the model Kafka used before
KIP-447: one transactional producer per *input partition*, ``transactional.id =
explainstream-<group>-<topic>-<partition>``. The fencing model:

* **Initialise on assignment, before fetching.** :meth:`TransactionalSink.open` runs
  ``init_transactions`` for every newly assigned partition inside the rebalance callback.
  That aborts the previous owner's open transaction and bumps the producer epoch, so the
  previous owner can never commit again. Only then does the service read the committed
  offset (now final) and start fetching the partition.
* **Fenced means lost.** A producer the broker fenced (``ProducerFenced``,
  ``InvalidProducerEpoch``) belongs to a zombie: this process was frozen past the session
  timeout and another member owns the partition now. The partition is *lost*: its held
  results are dropped, its producer is closed and never re-initialised (that would fence the
  rightful owner back), and ``on_lost`` tells the service to stop working on it. The group
  reassigns it; if it comes back to us, :meth:`open` makes a fresh producer for the new
  ownership. Each loss is counted (``explainstream_partitions_lost_total{reason}``): the
  evidence that a fence fired.
* Every request offset is committed in the same transaction as its result (or DLQ record);
  a crash before commit aborts both, so for readers with ``isolation_level=read_committed``
  no duplicate is visible and no result is lost. Results of a partition become visible in
  offset order, at commit intervals (COMMIT_INTERVAL_MS).

* **Refused means replaced.** A record the broker refuses for good (a non-retriable error
  on its own send: not permitted, too large, invalid topic) aborts the transaction, and the
  record is replaced by its next *alternative* from the runtime (a FAILED answer on the
  default results topic, then the request in the DLQ); the next round commits that. With no
  alternative left the partition is given up like a fenced one, so ``/health`` fails and a
  restart retries, instead of the partition stalling behind it for good.

Other transaction errors (retriable: the broker is away, a leader moves) abort the
transaction and keep the records held for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from consumer.core.offsets import OffsetTracker
from consumer.kafka.sinks import Alternative, Headers, Record, topic_writable

__all__ = ["TransactionalSink"]

log = logging.getLogger("explainstream.eos")

_FENCED = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


@dataclass
class _Held:
    record: Record
    alternatives: list[Alternative]


@dataclass
class _Partition:
    producer: AIOKafkaProducer
    pending: dict[int, _Held] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Refused(Exception):
    """Aborts a transaction in which the broker refused records for good."""


class TransactionalSink:
    """Holds finished records per input partition and commits them with their offsets."""

    defers_writes = True

    def __init__(
        self,
        conn_kwargs: dict[str, Any],
        *,
        group_id: str,
        publish_timeout_s: float,
        on_commit: Callable[[float], None] | None = None,
        on_lost: Callable[[Hashable, str], None] | None = None,
    ) -> None:
        self._conn = conn_kwargs
        self._group = group_id
        self._timeout = publish_timeout_s
        self._parts: dict[Hashable, _Partition] = {}
        self._on_commit = on_commit
        self._on_lost = on_lost
        self._known: dict[str, None] = {}  # an ordered, bounded set
        self._rounds: set[asyncio.Future[None]] = set()  # kept alive past a cancelled caller

    def transactional_id(self, tp: TopicPartition) -> str:
        """Stable id per input partition (see module docstring)."""
        return f"explainstream-{self._group}-{tp.topic}-{tp.partition}"

    async def open(self, tps: set[Hashable]) -> set[Hashable]:
        """Initialise a transactional producer per partition (fences the previous owner)."""
        new = [tp for tp in tps if tp not in self._parts]
        results = await asyncio.gather(*(self._init(tp) for tp in new), return_exceptions=True)
        for tp, res in zip(new, results, strict=True):
            if isinstance(res, BaseException):
                log.error("cannot initialise the producer of %s: %r", tp, res)
            else:
                self._parts[tp] = _Partition(res)
        return {tp for tp in tps if tp in self._parts}

    async def _init(self, tp: Any) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **self._conn,
            transactional_id=self.transactional_id(tp),
            acks="all",
            enable_idempotence=True,
        )
        try:
            await asyncio.wait_for(producer.start(), self._timeout)  # init_transactions
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def writable(self, topic: str) -> bool:
        """Metadata for ``topic`` within the publish timeout (cached once seen)."""
        if topic in self._known:
            return True
        part = next(iter(self._parts.values()), None)
        if part is None:
            return False
        return await topic_writable(part.producer, topic, self._timeout, self._known)

    async def put(
        self,
        tp: Hashable,
        offset: int,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        alternatives: Sequence[Alternative] = (),
    ) -> None:
        """Hold one output record for the request at ``tp``/``offset``, with what to write
        instead if the broker refuses it for good.

        A partition that is not (or no longer) ours drops it: its next owner answers.
        """
        part = self._parts.get(tp)
        if part is not None:
            part.pending[offset] = _Held((topic, key, value, headers), list(alternatives))

    async def commit(self, tracker: OffsetTracker, tps: Iterable[Hashable]) -> None:
        """Per partition: held records below the safe position, plus that offset, atomically.

        Each partition's round runs to its end even when the caller is cancelled (the
        commit loop is, at shutdown): a round cut off inside its EndTxn would leave its
        records held although the broker committed them, and the final commit would write
        them a second time. The next caller waits for that round on the partition's lock.
        """
        for tp in list(tps):
            part = self._parts.get(tp)
            if part is None:
                continue
            round_ = asyncio.ensure_future(self._commit_partition(tracker, tp, part))
            self._rounds.add(round_)
            round_.add_done_callback(self._round_done)
            await asyncio.shield(round_)

    def _round_done(self, round_: asyncio.Future[None]) -> None:
        self._rounds.discard(round_)
        if not round_.cancelled() and round_.exception() is not None:
            # Seen by the awaiting caller too, unless that caller was cancelled meanwhile.
            log.warning("transaction round failed: %r", round_.exception())

    async def _commit_partition(
        self, tracker: OffsetTracker, tp: Hashable, part: _Partition
    ) -> None:
        async with part.lock:
            if self._parts.get(tp) is not part:
                return  # lost or released while we waited
            target = tracker.to_commit([tp]).get(tp)
            if target is None:
                return
            ready = sorted(o for o in part.pending if o < target)
            started = time.monotonic()
            producer = part.producer
            refused: dict[int, BaseException] = {}
            try:
                async with producer.transaction():
                    refused = await _send_held(producer, part, ready)
                    if refused:
                        raise _Refused
                    await producer.send_offsets_to_transaction({tp: target}, self._group)
            except _FENCED as exc:
                await self._lose(tp, exc, "its producer was fenced", "fenced")
                return
            except _Refused:
                await self._replace(tp, part, refused)
                return
            except KafkaError as exc:
                # Aborted: records stay held, offsets uncommitted; the next round retries.
                log.warning("transaction for %s failed: %r", tp, exc)
                return
            for offset in ready:
                del part.pending[offset]
            tracker.committed({tp: target})
            if self._on_commit is not None:
                self._on_commit(time.monotonic() - started)

    async def _replace(
        self, tp: Hashable, part: _Partition, refused: dict[int, BaseException]
    ) -> None:
        """Swap each refused record for its next alternative; none left: give ``tp`` up."""
        for offset, exc in sorted(refused.items()):
            held = part.pending[offset]
            if not held.alternatives:
                why = f"the record of offset {offset} was refused everywhere"
                await self._lose(tp, exc, why, "refused")
                return
            topic = held.record[0]
            held.record = held.alternatives.pop(0)(exc)
            log.error(
                "record of %s@%d refused by %s (%r); writing its alternative to %s",
                tp,
                offset,
                topic,
                exc,
                held.record[0],
            )

    async def _lose(self, tp: Hashable, exc: BaseException, why: str, reason: str) -> None:
        part = self._parts.pop(tp, None)
        if part is None:
            return
        log.error(
            "%s (%r): partition %s lost, %d held results dropped; the group (or a restart, "
            "when /health fails) gives it an owner again",
            why,
            exc,
            tp,
            len(part.pending),
        )
        part.pending.clear()
        with contextlib.suppress(Exception):
            await part.producer.stop()
        if self._on_lost is not None:
            self._on_lost(tp, reason)

    def held(self, tp: Hashable) -> int:
        """Records held for ``tp`` until its next transaction."""
        part = self._parts.get(tp)
        return len(part.pending) if part else 0

    async def release(self, tps: set[Hashable]) -> None:
        """Drop revoked partitions: their producers stop, unflushed records are discarded."""
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is not None:
                async with part.lock:  # a transaction in progress ends first
                    with contextlib.suppress(Exception):
                        await part.producer.stop()

    async def close(self) -> None:
        """Stop every producer."""
        await self.release(set(self._parts))


async def _send_held(
    producer: AIOKafkaProducer, part: _Partition, offsets: list[int]
) -> dict[int, BaseException]:
    """Send the held records at ``offsets`` inside the open transaction and wait for their
    acks. Returns the records the broker refused for good, by offset; raises a fence (the
    producer belongs to a zombie: nothing was refused, the partition is lost), else the
    first retriable error when nothing was refused (the whole round is retried)."""
    sent: list[tuple[int, asyncio.Future[Any]]] = []
    refused: dict[int, BaseException] = {}
    for offset in offsets:
        topic, key, value, headers = part.pending[offset].record
        try:
            sent.append((offset, await producer.send(topic, value, key=key, headers=headers)))
        except KafkaError as exc:
            if exc.retriable or isinstance(exc, _FENCED):
                raise
            refused[offset] = exc  # refused before sending (e.g. over max_request_size)
    outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
    fence = next((o for o in outcomes if isinstance(o, _FENCED)), None)
    if fence is not None:
        raise fence
    retry: BaseException | None = None
    for (offset, _), outcome in zip(sent, outcomes, strict=True):
        if isinstance(outcome, KafkaError) and not outcome.retriable:
            refused[offset] = outcome
        elif isinstance(outcome, BaseException) and retry is None:
            retry = outcome
    if not refused and retry is not None:
        raise retry
    return refused
