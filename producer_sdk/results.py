"""ResultsReader: an async iterator over a results topic for downstream consumers."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from producer_sdk._kafka import (
    guarded,
    make_consumer,
    partitions_of,
    start_or_close,
    warn_unclosed,
)
from producer_sdk._requests import topic_prefix_from_env
from producer_sdk.connection import KafkaConnection
from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.models import ExplanationResult
from schemas.registry import codec_from_env, resolve_waiting

__all__ = ["ResultsReader", "results"]

log = logging.getLogger(__name__)


class ResultsReader:
    """Decoded ExplanationResults from ``<prefix>.results`` (or ``topic``), read_committed.

    * ``from_beginning``: start at the earliest offset instead of the end (without a
      group) or when the group has no committed offset (with one).
    * ``follow=False``: stop at the end offsets captured at start.
    * ``group_id``: join a consumer group and commit progress (auto-commit); without one
      the reader assigns every partition itself and commits nothing.
    * ``max_results``: stop after that many results.

    Undecodable records are skipped and counted in :attr:`skipped`.
    Use ``async with reader: async for result in reader`` or simply ``async for``.
    """

    def __init__(
        self,
        connection: KafkaConnection | None = None,
        *,
        topic_prefix: str = "explain",
        topic: str | None = None,
        from_beginning: bool = False,
        follow: bool = True,
        group_id: str | None = None,
        max_results: int | None = None,
        codec: Codec | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.connection = connection or KafkaConnection()
        self.topic = topic or f"{topic_prefix}.results"
        self.from_beginning = from_beginning
        self.follow = follow
        self.group_id = group_id
        self.max_results = max_results
        self.codec = codec or Codec()
        self.skipped = 0
        self.delivered = 0
        self._options = dict(consumer_options or {})
        self._consumer: AIOKafkaConsumer | None = None
        self._ends: dict[TopicPartition, int] = {}
        self._buffer: deque[ExplanationResult] = deque()
        self._finished = False

    @classmethod
    def from_env(cls, **kwargs: Any) -> ResultsReader:
        """Connection from KAFKA_* variables, the prefix from KAFKA_TOPIC_PREFIX and the
        schema registry from SCHEMA_REGISTRY_* (unset: the embedded ids)."""
        kwargs.setdefault("topic_prefix", topic_prefix_from_env())
        kwargs.setdefault("codec", codec_from_env())
        return cls(KafkaConnection.from_env(), **kwargs)

    async def start(self) -> None:
        """Connect and position the reader."""
        if self._consumer is not None:
            return
        reset = "earliest" if self.from_beginning else "latest"
        consumer = make_consumer(
            self.connection,
            group_id=self.group_id,
            enable_auto_commit=self.group_id is not None,
            auto_offset_reset=reset,
            **self._options,
        )
        await start_or_close(self.connection, "starting results reader", consumer)
        self._consumer = consumer
        try:
            await self._position(consumer)
        except BaseException:
            await self.close()
            raise

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        partitions = await partitions_of(self.connection, consumer, self.topic)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not self.follow:
            self._ends = await guarded(
                self.connection, "reading end offsets", consumer.end_offsets(tps)
            )
        if self.group_id is not None:
            consumer.subscribe([self.topic])
            return
        consumer.assign(tps)
        if self.from_beginning:
            await guarded(self.connection, "seeking", consumer.seek_to_beginning(*tps))
        else:
            await guarded(self.connection, "seeking", consumer.seek_to_end(*tps))
        for tp in tps:  # resolve positions now, so nothing produced after start is missed
            await guarded(self.connection, "positioning", consumer.position(tp))

    async def close(self) -> None:
        """Disconnect (committing progress when in a group); idempotent."""
        consumer, self._consumer = self._consumer, None
        self._finished = True
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> ResultsReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_consumer", None) is not None:
            warn_unclosed(self)

    def __aiter__(self) -> ResultsReader:
        return self

    async def __anext__(self) -> ExplanationResult:
        if self._consumer is None and not self._finished:
            await self.start()
        while True:
            if self.max_results is not None and self.delivered >= self.max_results:
                await self.close()
                raise StopAsyncIteration
            if self._buffer:
                self.delivered += 1
                return self._buffer.popleft()
            if self._finished or self._consumer is None:
                raise StopAsyncIteration
            if not self.follow and await self._caught_up(self._consumer):
                await self.close()
                raise StopAsyncIteration
            await self._fill(self._consumer)

    async def _fill(self, consumer: AIOKafkaConsumer) -> None:
        batches = await guarded(
            self.connection, f"reading {self.topic}", consumer.getmany(timeout_ms=500)
        )
        for records in batches.values():
            for record in records:
                try:
                    # While the registry is unreachable the reader waits (then raises the
                    # retriable error); only records that can never decode are skipped.
                    await resolve_waiting(self.codec, record.value)
                    self._buffer.append(self.codec.decode_result(record.value))
                except DecodeError as exc:
                    if exc.retriable:
                        raise
                    self.skipped += 1
                    log.warning(
                        "skipping undecodable result %s[%d]@%d: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        exc,
                    )

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        assigned = consumer.assignment()
        if not assigned:
            return False
        for tp in assigned:
            end = self._ends.get(tp, 0)
            position = await guarded(self.connection, "positioning", consumer.position(tp))
            if position < end:
                return False
        return True


def results(connection: KafkaConnection | None = None, **options: Any) -> ResultsReader:
    """A :class:`ResultsReader` (see its options); iterate it with ``async for``.

    Without ``connection`` the KAFKA_* environment is used, without ``topic_prefix``
    KAFKA_TOPIC_PREFIX, and without ``codec`` SCHEMA_REGISTRY_*.
    """
    options.setdefault("topic_prefix", topic_prefix_from_env())
    options.setdefault("codec", codec_from_env())
    return ResultsReader(connection or KafkaConnection.from_env(), **options)
