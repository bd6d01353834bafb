"""Where results go: one seam (:class:`ResultSink`), two delivery policies.

* :class:`AtLeastOnceSink` — every record is sent and acknowledged before its offset counts
  as done; offsets are committed separately, only for the contiguous handled prefix. A send
  gives up after PUBLISH_TIMEOUT_S with :class:`PublishError` (the runner then answers FAILED
  on the default results topic, or dead-letters).
* :class:`~consumer.kafka.eos.TransactionalSink` (DELIVERY=exactly-once) — records are held
  per input partition and written with that partition's offsets in one transaction. A
  record the broker refuses for good (not permitted, too large) cannot fail its request
  there, since the request finished long before; so each held record comes with its
  *alternatives* (a FAILED answer on the default results topic, the DLQ), tried in order.

The runtime never sees an aiokafka type: it hands a sink (topic, key, value, headers) and the
request's (partition, offset), and asks it to commit what the offset tracker allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from consumer.core.offsets import OffsetTracker
from schemas.errors import KafkaUnavailable

__all__ = ["Alternative", "AtLeastOnceSink", "Headers", "PublishError", "Record", "ResultSink"]

log = logging.getLogger("explainstream.sink")

Headers = list[tuple[str, bytes]]
#: One output record: (topic, key, value, headers).
Record = tuple[str, bytes | None, bytes | None, Headers]
#: What to write instead of a record the broker refused for good (given the refusal).
Alternative = Callable[[BaseException], Record]


class PublishError(KafkaUnavailable):
    """A record could not be written within PUBLISH_TIMEOUT_S (or the topic refuses it)."""

    retriable = False


#: Topic names a sink remembers as writable (reply_to names come from requests).
MAX_KNOWN_TOPICS = 1024


async def topic_exists(producer: AIOKafkaProducer, topic: str) -> bool:
    """Whether the cluster has ``topic``, asked so that the question creates nothing: a
    metadata request with auto-creation off, outside the producer's own topic set (which
    ``partitions_for`` would grow, and with which a broker with auto-create on creates
    whatever name a request's ``reply_to`` says)."""
    client = producer.client
    node = client.get_random_node()
    if node is None:
        raise KafkaError("no broker known")
    answer = await client.send(node, MetadataRequest([topic], allow_auto_topic_creation=False))
    topics = answer.to_object()["topics"]
    return any(t["topic"] == topic and t["error_code"] == 0 and t["partitions"] for t in topics)


async def topic_writable(
    producer: AIOKafkaProducer, topic: str, timeout_s: float, known: dict[str, None]
) -> bool:
    """Whether ``topic`` exists and ``producer`` gets its metadata within ``timeout_s``;
    remembered in ``known`` (bounded: the oldest name is forgotten first) when it does."""
    try:
        async with asyncio.timeout(timeout_s):
            if not await topic_exists(producer, topic):
                log.warning("topic %s is not writable: it does not exist", topic)
                return False
            parts = await producer.partitions_for(topic)
    except (TimeoutError, KafkaError) as exc:
        log.warning("topic %s is not writable: %s", topic, exc)
        return False
    if parts:
        known[topic] = None
        while len(known) > MAX_KNOWN_TOPICS:
            del known[next(iter(known))]
    return bool(parts)


class ResultSink(Protocol):
    """What the runtime asks of result delivery (see module docstring)."""

    #: True when records are written later, at commit time (so refusals surface there and
    #: ``put`` needs alternatives); False when ``put`` writes at once and raises instead.
    defers_writes: bool

    async def open(self, tps: set[Hashable]) -> set[Hashable]:
        """Prepare newly assigned partitions; returns those that are ready."""
        ...

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
        """Deliver (or hold for the transaction) the output of the request at tp/offset.

        ``alternatives`` are used, in order, when a held record is refused for good at
        commit time (exactly-once); a sink that sends at once raises PublishError instead.
        """
        ...

    async def writable(self, topic: str) -> bool:
        """Does ``topic`` exist for this producer, within PUBLISH_TIMEOUT_S?"""
        ...

    async def commit(self, tracker: OffsetTracker, tps: Iterable[Hashable]) -> None:
        """Commit, per partition, what the tracker says is safe."""
        ...

    async def release(self, tps: set[Hashable]) -> None:
        """Forget revoked or lost partitions."""
        ...

    async def close(self) -> None:
        """Stop every client (idempotent)."""
        ...


class AtLeastOnceSink:
    """Idempotent producer; offsets committed through the group after the acks."""

    defers_writes = False

    def __init__(
        self,
        conn: dict[str, Any],
        consumer: AIOKafkaConsumer,
        *,
        publish_timeout_s: float,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._conn = conn
        self._consumer = consumer
        self._timeout = publish_timeout_s
        self._on_commit = on_commit
        self._producer: AIOKafkaProducer | None = None
        self._known: dict[str, None] = {}  # an ordered, bounded set

    async def start(self) -> None:
        """Connect the producer."""
        self._producer = AIOKafkaProducer(
            **self._conn, acks="all", enable_idempotence=True, linger_ms=2
        )
        await self._producer.start()

    async def open(self, tps: set[Hashable]) -> set[Hashable]:
        """Nothing to prepare per partition."""
        return set(tps)

    async def writable(self, topic: str) -> bool:
        """Metadata for ``topic`` within the publish timeout (cached once seen)."""
        if topic in self._known:
            return True
        assert self._producer is not None
        return await topic_writable(self._producer, topic, self._timeout, self._known)

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
        """Send and await the ack; retriable errors are retried until the timeout, then
        PublishError (the caller answers with its own alternatives)."""
        assert self._producer is not None
        deadline = time.monotonic() + self._timeout
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(
                    self._producer.send_and_wait(topic, value, key=key, headers=headers),
                    max(0.01, left),
                )
                return
            except TimeoutError:
                raise PublishError(
                    f"no ack from {topic} within PUBLISH_TIMEOUT_S={self._timeout}s"
                ) from None
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or left <= delay:
                    raise PublishError(f"publish to {topic} failed: {exc!r}") from exc
                log.warning("publish to %s failed (%s); retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def commit(self, tracker: OffsetTracker, tps: Iterable[Hashable]) -> None:
        """Commit the handled prefix of ``tps``; a rebalance in progress skips the round."""
        offsets = tracker.to_commit(list(tps))
        if not offsets:
            return
        started = time.monotonic()
        typed: dict[TopicPartition, int] = {tp: off for tp, off in offsets.items()}
        try:
            await self._consumer.commit(typed)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions; the new owner re-reads from the last commit.
            log.info("commit skipped during rebalance: %s", exc)
            return
        tracker.committed(offsets)
        if self._on_commit is not None:
            self._on_commit(time.monotonic() - started)

    async def release(self, tps: set[Hashable]) -> None:
        """Nothing is held per partition."""

    async def close(self) -> None:
        """Stop the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
