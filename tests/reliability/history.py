"""The one history checker of the reliability suite (in the manner of Jepsen's Kafka checker).

Every input is recorded where the broker put it (topic, partition, offset, request_id; a
poison record has no request_id). Every output is read back from the results topic and the
DLQ with ``isolation_level=read_committed``. :meth:`History.check` then says: which inputs
have no output (missing), which have more than one (duplicates), which outputs answer no
input (phantoms), and, read again with ``read_uncommitted``, how many records sat in
transactions that a committed reader must never see (aborted or fenced).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.kafka.committed import guard_offset_fetches
from producer_sdk.connection import KafkaConnection
from schemas.codec import Codec
from schemas.models import ExplanationRequest, ExplanationResult

CODEC = Codec()

Position = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True, slots=True)
class Input:
    """One record put on a request topic."""

    topic: str
    partition: int
    offset: int
    request_id: str | None  # None: not a valid request (expected in the DLQ)

    @property
    def position(self) -> Position:
        """Where the broker stored it."""
        return (self.topic, self.partition, self.offset)


@dataclass
class Verdict:
    """What the checker found; ``ok(bound)`` is the scenario's pass condition."""

    requests: int
    answered: int
    missing: list[str]
    duplicates: int  # extra outputs beyond one per input
    duplicated_inputs: list[Position]
    phantoms: int  # outputs that answer no recorded input
    statuses: Counter[str]
    dead_lettered: int
    poison: int
    aborted_hidden: int  # records in aborted/fenced transactions, hidden from read_committed
    duplicates_below_commit: int = 0  # duplicates at offsets already committed at a fault
    identical_copies: int = 0  # duplicates byte-identical to another output: a resent record
    per_fault: list[int] = field(default_factory=list)  # repeats attributed to each fault
    valid_statuses: Counter[str] = field(default_factory=Counter)  # of valid inputs only
    valid_dead_lettered: list[Position] = field(default_factory=list)

    def problems(self, duplicate_bound: int, statuses: frozenset[str]) -> list[str]:
        """Human-readable violations (empty when the guarantee held): ``duplicate_bound``
        holds per fault window (in total when there was no fault); every valid input is
        answered with one of ``statuses`` and none is dead-lettered."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} inputs without output, e.g. {self.missing[:3]}")
        windows = self.per_fault or [self.duplicates]
        for n, repeats in enumerate(windows, start=1):
            if repeats > duplicate_bound:
                where = f"in fault window {n}" if self.per_fault else "without a fault"
                out.append(
                    f"{repeats} duplicate outputs {where} > bound "
                    f"{duplicate_bound} (e.g. at {self.duplicated_inputs[:3]})"
                )
        unexpected = {s: n for s, n in self.valid_statuses.items() if s not in statuses}
        if unexpected:
            out.append(f"valid requests answered {unexpected}, expected only {sorted(statuses)}")
        if self.valid_dead_lettered:
            out.append(
                f"{len(self.valid_dead_lettered)} valid requests dead-lettered, "
                f"e.g. at {self.valid_dead_lettered[:3]}"
            )
        if self.duplicates_below_commit:
            out.append(
                f"{self.duplicates_below_commit} duplicates below a committed offset "
                f"({self.identical_copies} identical copies of one send)"
            )
        if self.phantoms:
            out.append(f"{self.phantoms} outputs answer no recorded input")
        return out


@dataclass
class History:
    """Inputs and outputs of one scenario, plus the committed offsets seen at each fault."""

    conn: KafkaConnection
    results_topic: str
    dlq_topic: str
    inputs: dict[Position, Input] = field(default_factory=dict)
    faults: list[dict[Position, int]] = field(default_factory=list)
    below_commit: dict[Position, list[tuple[str, str]]] = field(default_factory=dict)

    # -- inputs -------------------------------------------------------------------------

    async def produce(
        self,
        topic: str,
        records: Iterable[tuple[str | None, bytes, bytes]],
        *,
        pace_s: float = 0.0,
    ) -> list[Input]:
        """Send (request_id or None, key, value) records, record where each landed.

        The producer is idempotent with retries, so a retried send cannot duplicate an input.
        ``pace_s`` spreads the sends (a pause every 20 records), so that a fault can hit
        them in flight.
        """
        producer = AIOKafkaProducer(
            **self.conn.aiokafka_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
        )
        await producer.start()
        try:
            sent = []
            for n, (rid, key, value) in enumerate(records, start=1):
                sent.append((rid, await producer.send(topic, value, key=key)))
                if pace_s and n % 20 == 0:
                    await asyncio.sleep(pace_s)
            out = []
            for rid, future in sent:
                meta = await future
                item = Input(meta.topic, meta.partition, meta.offset, rid)
                self.inputs[item.position] = item
                out.append(item)
            return out
        finally:
            await producer.stop()

    async def produce_requests(
        self, topic: str, requests: list[ExplanationRequest], *, pace_s: float = 0.0
    ) -> None:
        """Encode and send valid requests keyed by request_id."""
        await self.produce(
            topic,
            [(r.request_id, r.request_id.encode(), CODEC.encode_request(r)) for r in requests],
            pace_s=pace_s,
        )

    async def record_from_log(self, topic: str) -> int:
        """Record as inputs the records on ``topic`` that other clients (SDK, CLI) wrote:
        the log is the history. Returns how many were added."""
        added = 0
        for r in await self._read_all(topic, "read_committed"):
            pos = (r.topic, r.partition, r.offset)
            if pos not in self.inputs:
                rid = CODEC.decode_request(r.value).request_id
                self.inputs[pos] = Input(r.topic, r.partition, r.offset, rid)
                added += 1
        return added

    async def wait_log_size(self, topic: str, count: int, timeout_s: float = 60) -> None:
        """Wait until ``topic`` holds at least ``count`` records (sum of end offsets)."""
        consumer = AIOKafkaConsumer(**self.conn.aiokafka_kwargs())
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
            deadline = time.monotonic() + timeout_s
            while sum((await consumer.end_offsets(tps)).values()) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic} never reached {count} records")
                await asyncio.sleep(0.05)
        finally:
            await consumer.stop()

    @property
    def request_ids(self) -> set[str]:
        """Ids of every valid request sent."""
        return {i.request_id for i in self.inputs.values() if i.request_id is not None}

    async def mark_fault(self, group_id: str) -> dict[Position, int]:
        """Record the group's committed offsets now (just after a fault): a request below
        them was acknowledged as done and must never be answered again."""
        topics = sorted({i.topic for i in self.inputs.values()})
        consumer = AIOKafkaConsumer(
            **self.conn.aiokafka_kwargs(), group_id=group_id, enable_auto_commit=False
        )
        await consumer.start()
        guard_offset_fetches(consumer)  # a coordinator loading must not read as "none"
        committed: dict[Position, int] = {}
        try:
            for topic in topics:
                for p in sorted({i.partition for i in self.inputs.values() if i.topic == topic}):
                    off = await consumer.committed(TopicPartition(topic, p))
                    committed[(topic, p, 0)] = off or 0
        finally:
            await consumer.stop()
        self.faults.append(committed)
        return committed

    # -- outputs ------------------------------------------------------------------------

    async def _read_all(self, topic: str, isolation: str) -> list[Any]:
        consumer = AIOKafkaConsumer(
            **self.conn.aiokafka_kwargs(),
            isolation_level=isolation,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        out: list[Any] = []
        try:
            parts = await _partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            # read_committed end offsets are the last stable offsets.
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + 120
            while not await _caught_up(consumer, ends):
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end")
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(records)
        finally:
            await consumer.stop()
        return out

    async def outputs(self, isolation: str = "read_committed") -> list[ExplanationResult]:
        """Every result on the results topic."""
        records = await self._read_all(self.results_topic, isolation)
        return [CODEC.decode_result(r.value) for r in records]

    async def dead_letters(self, isolation: str = "read_committed") -> list[Position]:
        """Original positions named by every DLQ record."""
        out = []
        for r in await self._read_all(self.dlq_topic, isolation):
            headers = {k: v.decode() for k, v in r.headers}
            out.append(
                (
                    headers["dlq.original.topic"],
                    int(headers["dlq.original.partition"]),
                    int(headers["dlq.original.offset"]),
                )
            )
        return out

    async def wait_answered(self, timeout_s: float, *, extra: int = 0) -> None:
        """Poll the results topic (read_committed) until every valid request has a result
        (and the DLQ holds ``extra`` records), or fail naming how many are missing."""
        want = self.request_ids
        consumer = AIOKafkaConsumer(
            self.results_topic,
            self.dlq_topic,
            **self.conn.aiokafka_kwargs(),
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        seen: set[str] = set()
        dlq = 0
        deadline = time.monotonic() + timeout_s
        try:
            while not (want <= seen and dlq >= extra):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{len(want - seen)} of {len(want)} requests unanswered "
                        f"and {max(0, extra - dlq)} dead letters missing after {timeout_s:.0f}s"
                    )
                batch = await consumer.getmany(timeout_ms=300)
                for tp, records in batch.items():
                    if tp.topic == self.dlq_topic:
                        dlq += len(records)
                    else:
                        seen.update(CODEC.decode_result(r.value).request_id for r in records)
        finally:
            await consumer.stop()

    async def wait_count(self, count: int, timeout_s: float = 90) -> float:
        """Wait until at least ``count`` distinct requests have a committed result; returns
        the seconds waited."""
        started = time.monotonic()
        while (n := await self.count_answered()) < count:
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"only {n} of {count} answered after {timeout_s:.0f}s")
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def count_answered(self) -> int:
        """How many distinct requests have a committed result right now."""
        return len({r.request_id for r in await self.outputs()} & self.request_ids)

    async def input_copies(self) -> int:
        """Extra copies of a request on the request topics (a producer retry that was not
        deduplicated would leave one): 0 when idempotence held."""
        ids: Counter[str] = Counter()
        for topic in sorted({i.topic for i in self.inputs.values()}):
            for record in await self._read_all(topic, "read_uncommitted"):
                if record.key is not None:
                    ids[record.key.decode(errors="replace")] += 1
        return sum(n - 1 for rid, n in ids.items() if rid in self.request_ids)

    # -- the check ----------------------------------------------------------------------

    async def check(self) -> Verdict:
        """Read every output (committed and not) and compare with the inputs."""
        results = await self.outputs("read_committed")
        dead = await self.dead_letters("read_committed")
        raw = len(await self._read_all(self.results_topic, "read_uncommitted")) + len(
            await self._read_all(self.dlq_topic, "read_uncommitted")
        )
        hits: Counter[Position] = Counter()
        phantoms = 0
        statuses: Counter[str] = Counter()
        valid_statuses: Counter[str] = Counter()
        valid_dead: list[Position] = []
        # Same record answered by the same consumer at the same instant twice: one send
        # written twice (a producer retry without idempotence, a transaction's records sent
        # again), not a request processed twice.
        copies = Counter(
            (
                r.request_offset.topic,
                r.request_offset.partition,
                r.request_offset.offset,
                r.request_id,
                r.consumer_id,
                r.completed_at,
            )
            for r in results
        )
        for r in results:
            # A result names the record it answers; a valid input must also match by id.
            src = r.request_offset
            item = self.inputs.get((src.topic, src.partition, src.offset))
            if item is None or item.request_id not in (None, r.request_id):
                phantoms += 1
                continue
            hits[item.position] += 1
            statuses[r.status.value] += 1
            if item.request_id is not None:
                valid_statuses[r.status.value] += 1
        for pos in dead:
            if pos in self.inputs:
                hits[pos] += 1
                if self.inputs[pos].request_id is not None:
                    valid_dead.append(pos)
            else:
                phantoms += 1
        missing = [
            i.request_id or f"poison@{i.position}"
            for i in self.inputs.values()
            if not hits[i.position]
        ]
        dups = [pos for pos, n in hits.items() if n > 1]
        # A request may be answered again once per fault at which it was not yet committed.
        excess = {
            pos: hits[pos] - 1 - sum(pos[2] >= f.get((pos[0], pos[1], 0), 0) for f in self.faults)
            for pos in dups
        }
        below = sum(n for n in excess.values() if n > 0)
        # Each repeat belongs to a fault at which its input was not yet committed: the
        # first such fault takes the first repeat, the next the second, and so on.
        per_fault = [0] * len(self.faults)
        for pos in dups:
            windows = [
                n for n, f in enumerate(self.faults) if pos[2] >= f.get((pos[0], pos[1], 0), 0)
            ]
            for n in windows[: hits[pos] - 1]:
                per_fault[n] += 1
        self.below_commit = {
            pos: sorted(
                (r.consumer_id, r.completed_at.isoformat())
                for r in results
                if (r.request_offset.topic, r.request_offset.partition, r.request_offset.offset)
                == pos
            )
            for pos, n in excess.items()
            if n > 0
        }
        return Verdict(
            requests=len(self.inputs),
            answered=sum(1 for i in self.inputs.values() if hits[i.position]),
            missing=missing,
            duplicates=sum(hits[pos] - 1 for pos in dups),
            duplicated_inputs=sorted(dups),
            phantoms=phantoms,
            statuses=statuses,
            dead_lettered=len(dead),
            poison=sum(1 for i in self.inputs.values() if i.request_id is None),
            aborted_hidden=raw - len(results) - len(dead),
            duplicates_below_commit=below,
            identical_copies=sum(n - 1 for n in copies.values()),
            per_fault=per_fault,
            valid_statuses=valid_statuses,
            valid_dead_lettered=sorted(valid_dead),
        )


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} has no partitions")
