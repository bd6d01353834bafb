"""Records the Kafka client cannot parse: find them, dead-letter a reference, move on.

aiokafka parses a fetched batch inside ``getmany``; a record it cannot parse (a header key
that is not UTF-8, which any raw client can write and the broker stores) raises from
``getmany`` itself — not a ``KafkaError``, and with no record to hand to the DLQ. Worse,
the call loses what it had drained for the other partitions while their positions moved
on. :class:`UnreadableRecords` is the answer of every reader here (the consumer's intake,
the client's reply listener):

1. :meth:`rewind`: every fetchable partition goes back to the next offset the intake has
   not taken (records the failed call drained are read again, not skipped), and is read
   *carefully* up to its high watermark at that moment: one record per ``getmany``, one
   partition at a time;
2. a careful read that fails has found the record: it is the next offset of that partition.
   After a second failure at the same offset the partition moves past it and the reader is
   given a :class:`RecordReference` (the intake dead-letters it: an empty value with the
   ``dlq.*`` headers naming its topic, partition, offset and the error, since its bytes
   cannot be read through the client).

The intake commits nothing past a record that was neither taken nor dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer

__all__ = ["RecordReference", "UnreadableRecords"]

log = logging.getLogger("explainstream.intake")


@dataclass(frozen=True, slots=True)
class RecordReference:
    """What the DLQ is given for a record nobody can read: where it is, no bytes."""

    offset: int
    key: bytes | None = None
    value: bytes = b""
    timestamp: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class UnreadableRecords:
    """Careful reading after an unparseable fetch (see module docstring)."""

    consumer: AIOKafkaConsumer
    next_offset: dict[Any, int] = field(default_factory=dict)  # the intake's, per partition
    careful: dict[Any, int] = field(default_factory=dict)  # partition -> read carefully below
    _failed_at: dict[Any, int] = field(default_factory=dict)

    def took(self, tp: Any, next_offset: int) -> None:
        """The intake has taken (or rewound) ``tp`` up to ``next_offset``."""
        self.next_offset[tp] = next_offset
        limit = self.careful.get(tp)
        if limit is not None and next_offset >= limit:
            del self.careful[tp]
            self._failed_at.pop(tp, None)

    def forget(self, tps: Iterable[Any]) -> None:
        """Partitions that are no longer ours."""
        for tp in tps:
            self.next_offset.pop(tp, None)
            self.careful.pop(tp, None)
            self._failed_at.pop(tp, None)

    async def rewind(self, fetchable: Iterable[Any], error: BaseException) -> None:
        """After ``getmany`` raised ``error``: rewind and read ``fetchable`` carefully."""
        log.warning("a fetched batch could not be parsed (%r): reading record by record", error)
        for tp in fetchable:
            offset = self.next_offset.get(tp)
            if offset is None:
                try:
                    offset = await self.consumer.committed(tp)
                except Exception:  # a reader without a group has no committed offsets
                    offset = None
            if offset is None:
                continue  # nothing taken and nothing committed: the reset policy decides
            self.consumer.seek(tp, offset)
            high = self.consumer.highwater(tp)
            self.careful[tp] = high if high is not None and high > offset else offset + 1
            self.next_offset[tp] = offset

    def caught_up(self, tp: Any) -> None:
        """A careful read of ``tp`` returned nothing: nothing left to read carefully (if an
        unparseable record is still ahead, the next fetch fails again and rewinds)."""
        self.careful.pop(tp, None)

    def pick(self, fetchable: Iterable[Any]) -> Any | None:
        """The careful partition to read next, if one is fetchable."""
        for tp in fetchable:
            if tp in self.careful:
                return tp
        return None

    def failed(self, tp: Any) -> RecordReference | None:
        """A careful read of ``tp`` raised: the record at its next offset is the culprit.
        None after a first failure (read again once); the reference to dead-letter after a
        second at the same offset, with ``tp`` moved past it."""
        offset = self.next_offset[tp]
        self.consumer.seek(tp, offset)
        if self._failed_at.get(tp) != offset:
            self._failed_at[tp] = offset
            return None
        self._failed_at.pop(tp, None)
        self.consumer.seek(tp, offset + 1)
        return RecordReference(offset)
