"""Dead letters: undecodable records go to the DLQ unchanged, the error in headers.

Sends are bounded: at most ``limit`` run at once. The intake checks :meth:`DeadLetters.full`
first and, when every slot is busy, holds the partition at that record and keeps polling
(waiting here would stop the polls that keep the member in the group), so a flood of bad
records slows the intake instead of piling up tasks. A DLQ send is retried
until it lands (bad input is never dropped); while it cannot, the record's offset stays
uncommitted and the partition's commit waits there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable
from datetime import UTC, datetime
from typing import Any

from consumer.kafka.sinks import Headers, PublishError, ResultSink

__all__ = ["DeadLetters", "dlq_headers"]

log = logging.getLogger("explainstream.dlq")


def dlq_headers(
    original: Headers,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    group: str,
    error: BaseException,
    stage: str,
    attempts: int = 1,
) -> Headers:
    """The record's own headers plus the ``dlq.*`` headers of the public contract."""
    return [
        *original,
        ("dlq.error.class", type(error).__name__.encode()),
        ("dlq.error.message", str(error)[:2000].encode()),
        ("dlq.original.topic", topic.encode()),
        ("dlq.original.partition", str(partition).encode()),
        ("dlq.original.offset", str(offset).encode()),
        ("dlq.original.timestamp", str(timestamp).encode()),
        ("dlq.consumer.group", group.encode()),
        ("dlq.failed.at", datetime.now(UTC).isoformat().encode()),
        ("dlq.stage", stage.encode()),
        ("dlq.attempts", str(attempts).encode()),
    ]


class DeadLetters:
    """Bounded, retried DLQ writes through the result sink."""

    def __init__(
        self,
        sink: ResultSink,
        *,
        topic: str,
        group: str,
        spawn: Callable[[Hashable, Coroutine[Any, Any, None]], object],
        on_done: Callable[[Hashable, int, str, str], None],
        limit: int = 16,
    ) -> None:
        self._sink = sink
        self.topic = topic
        self._group = group
        self._spawn = spawn
        self._on_done = on_done
        self._slots = asyncio.Semaphore(limit)
        self.sent = 0

    def full(self) -> bool:
        """Every send slot is busy: :meth:`submit` would wait."""
        return self._slots.locked()

    async def submit(
        self,
        tp: Any,
        record: Any,
        error: BaseException,
        *,
        stage: str,
    ) -> None:
        """Wait for a free send slot, then send ``record`` (an aiokafka ConsumerRecord)."""
        headers = dlq_headers(
            list(record.headers or ()),
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            group=self._group,
            error=error,
            stage=stage,
        )
        log.warning("record %s:%d@%d to DLQ: %s", tp.topic, tp.partition, record.offset, error)
        await self._slots.acquire()
        self._spawn(tp, self._send(tp, record.offset, record.key, record.value, headers, stage))

    async def send_now(
        self,
        tp: Any,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
    ) -> None:
        """Send one prepared dead letter from a request task (no slot: the task is bounded)."""
        await self._deliver(tp, offset, key, value, headers)

    async def _send(
        self,
        tp: Any,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        stage: str,
    ) -> None:
        try:
            await self._deliver(tp, offset, key, value, headers)
            self._on_done(tp, offset, tp.topic, stage)
        finally:
            self._slots.release()

    async def _deliver(
        self, tp: Any, offset: int, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        delay = 0.5
        while True:  # exits on success, or by cancellation (revoke, stop)
            try:
                await self._sink.put(tp, offset, self.topic, key, value, headers)
                self.sent += 1
                return
            except PublishError as exc:
                log.error("DLQ %s not writable (%s); retrying in %.1fs", self.topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
