"""Rebalances: what the service does when the group assigns, revokes or a fence loses a
partition.

* **assigned** — the sink prepares the partitions (exactly-once: ``init_transactions``,
  which fences the previous owner), then each is positioned at its committed offset (read
  after the fence, so it is final; a read that fails for a session timeout holds the
  partition instead of guessing) and only then marked ready for the intake;
* **revoked** — no new records or work from them, buffered requests dropped (uncommitted:
  the next owner reads them), in-flight ones finish within DRAIN_TIMEOUT_S (else are
  cancelled), then the handled prefix is committed inside the callback, so no late commit
  hits a rebalanced group;
* **lost** (exactly-once, producer fenced) — buffered work and offsets of the partition are
  dropped; the group reassigns it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from consumer.config import TIERS
from consumer.core.partitions import PartitionState
from consumer.kafka.group import seek_to_committed
from consumer.runtime.supervisor import finish_within

if TYPE_CHECKING:
    from consumer.runtime.service import ConsumerService

__all__ = ["RebalanceMixin"]

log = logging.getLogger("explainstream.consumer")


class RebalanceMixin:
    """Rebalance hooks of :class:`~consumer.runtime.service.ConsumerService`."""

    async def _on_assigned(self: ConsumerService, assigned: set[Any]) -> None:  # type: ignore[misc]
        """Prepare the sink (exactly-once: fence the previous owner), position, then fetch."""
        now = time.monotonic()
        tier_of = {tp: TIERS.index(self._tier_of_topic[tp.topic]) for tp in assigned}
        self.book.assigning(assigned, tier_of, now)
        assert self.sink is not None
        ready = await self.sink.open(set(assigned))
        # A partition whose committed offset cannot be read is never fetched from a guess.
        timeout_s = self.settings.kafka_session_timeout_ms / 1000
        ready -= await seek_to_committed(self._consumer, ready, timeout_s)
        for tp in assigned - ready:
            # Held like a fenced partition: paused, and /health fails if the group does not
            # take it back within two session timeouts (a restart then retries).
            self.book.lost(tp, now)
            if self.metrics is not None:
                self.metrics.partition_lost("unprepared")
            log.error("partition %s could not be prepared; held until the group moves it", tp)
        self.tracker.forget(assigned)
        self._forget_unreadable(assigned)
        self.book.ready(ready, time.monotonic())
        if self.book.in_state(PartitionState.READY):
            self._has_partitions.set()
        if self.metrics is not None:
            self.metrics.rebalance("assigned")
        log.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        self._wake.set()

    async def _on_revoked(self: ConsumerService, revoked: set[Any]) -> None:  # type: ignore[misc]
        """Stop admitting, finish (or cancel within a bound) in-flight work, commit, release."""
        if not revoked:
            return
        self.book.revoking(revoked, time.monotonic())
        dropped = self.scheduler.drop_sources(revoked)
        await finish_within(self.supervisor.tasks_of(revoked), self.settings.drain_timeout_s)
        assert self.sink is not None
        try:
            await self.sink.commit(self.tracker, revoked & self.book.committable())
        except Exception as exc:
            log.warning("commit on revoke failed (the next owner redoes the work): %r", exc)
        await self.sink.release(revoked)
        self.tracker.forget(revoked)
        self._forget_unreadable(revoked)
        self.book.remove(revoked)
        if not self.book.in_state(PartitionState.READY):
            self._has_partitions.clear()
        if self.metrics is not None:
            self.metrics.rebalance("revoked")
            for tp in revoked:
                self.metrics.drop_lag(tp.topic, tp.partition)
        log.info(
            "revoked %d partitions (%d buffered requests left for the next owner)",
            len(revoked),
            len(dropped),
        )

    def _on_lost(self: ConsumerService, tp: Any, reason: str) -> None:  # type: ignore[misc]
        """Exactly-once: ``tp``'s producer was fenced (or its record refused everywhere);
        drop its work, wait for the group."""
        self.book.lost(tp, time.monotonic())
        if self.metrics is not None:
            self.metrics.partition_lost(reason)
        dropped = self.scheduler.drop_sources({tp})
        self.tracker.forget([tp])
        self._forget_unreadable([tp])
        log.error("partition %s lost (%s); %d buffered dropped", tp, reason, len(dropped))

    def _forget_unreadable(self: ConsumerService, tps: Any) -> None:  # type: ignore[misc]
        if self.intake is not None:
            self.intake.unreadable.forget(list(tps))
