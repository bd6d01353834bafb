"""Which partitions this member owns and what each may do: pure bookkeeping, no IO.

A partition moves ASSIGNING → READY on assignment (after the sink prepared it and its
committed offset was read), READY → REVOKING → gone on revocation, and READY → LOST when
its transactional producer was fenced (exactly-once: another member owns it now). Records
are taken only from READY partitions that are not waiting to retry a decode.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["PartitionBook", "PartitionState"]


class PartitionState(StrEnum):
    """Life of one owned partition."""

    ASSIGNING = "assigning"
    READY = "ready"
    REVOKING = "revoking"
    LOST = "lost"


@dataclass
class _Entry:
    tier: int
    state: PartitionState
    since: float
    retry_at: float | None = None
    retries: int = 0
    term: int = 0  # which assignment of the partition this is


@dataclass
class PartitionBook:
    """State per owned partition (see module docstring)."""

    _parts: dict[Hashable, _Entry] = field(default_factory=dict)
    _terms: int = 0

    def assigning(self, tps: Iterable[Hashable], tier_of: dict[Hashable, int], now: float) -> None:
        """Newly assigned partitions, not ready to fetch yet."""
        for tp in tps:
            self._terms += 1
            self._parts[tp] = _Entry(tier_of[tp], PartitionState.ASSIGNING, now, term=self._terms)

    def owner(self, tp: Hashable) -> int | None:
        """A token of this member's current READY ownership of ``tp`` (None when it is not
        READY). Compare tokens across an await: a partition revoked meanwhile — even one
        given back at once — has another (or none)."""
        entry = self._parts.get(tp)
        return entry.term if entry is not None and entry.state is PartitionState.READY else None

    def ready(self, tps: Iterable[Hashable], now: float) -> None:
        """Partitions prepared by the sink and positioned at their committed offset."""
        for tp in tps:
            entry = self._parts.get(tp)
            if entry is not None and entry.state is PartitionState.ASSIGNING:
                entry.state, entry.since = PartitionState.READY, now

    def revoking(self, tps: Iterable[Hashable], now: float) -> None:
        """Partitions being handed back: no new records, no new work."""
        for tp in tps:
            entry = self._parts.get(tp)
            if entry is not None:
                entry.state, entry.since = PartitionState.REVOKING, now

    def lost(self, tp: Hashable, now: float) -> None:
        """A partition whose producer was fenced (another member owns it) or could not be
        prepared: held, never committed, until the group takes it back."""
        entry = self._parts.get(tp)
        if entry is not None:
            entry.state, entry.since = PartitionState.LOST, now

    def remove(self, tps: Iterable[Hashable]) -> None:
        """Forget revoked partitions."""
        for tp in tps:
            self._parts.pop(tp, None)

    def wait(self, tp: Hashable, now: float, backoff: Callable[[int], float]) -> tuple[int, float]:
        """Hold ``tp`` for ``backoff(retries)`` seconds (a retriable decode error).

        Returns (retries so far, delay).
        """
        entry = self._parts.get(tp)
        if entry is None:
            return 0, 0.0
        entry.retries += 1
        delay = backoff(entry.retries)
        entry.retry_at = now + delay
        return entry.retries, delay

    def clear_wait(self, tp: Hashable) -> None:
        """A record of ``tp`` decoded: stop waiting, reset the backoff."""
        entry = self._parts.get(tp)
        if entry is not None:
            entry.retry_at, entry.retries = None, 0

    def state(self, tp: Hashable) -> PartitionState | None:
        """State of ``tp``, None when not owned."""
        entry = self._parts.get(tp)
        return entry.state if entry else None

    def accepts(self, tp: Hashable, now: float) -> bool:
        """May records of ``tp`` be taken now?"""
        entry = self._parts.get(tp)
        return (
            entry is not None
            and entry.state is PartitionState.READY
            and (entry.retry_at is None or now >= entry.retry_at)
        )

    def tiers(self) -> dict[Hashable, int]:
        """Every owned partition and its tier index."""
        return {tp: e.tier for tp, e in self._parts.items()}

    def held(self, now: float) -> set[Hashable]:
        """Owned partitions that must stay paused whatever the buffers say."""
        return {tp for tp in self._parts if not self.accepts(tp, now)}

    def in_state(self, state: PartitionState) -> set[Hashable]:
        """Owned partitions in ``state``."""
        return {tp for tp, e in self._parts.items() if e.state is state}

    def committable(self) -> set[Hashable]:
        """Partitions whose offsets this member may commit (ready or being revoked)."""
        return {
            tp
            for tp, e in self._parts.items()
            if e.state in (PartitionState.READY, PartitionState.REVOKING)
        }

    def lost_longer_than(self, seconds: float, now: float) -> set[Hashable]:
        """LOST partitions the group has not taken back within ``seconds``."""
        return {
            tp
            for tp, e in self._parts.items()
            if e.state is PartitionState.LOST and now - e.since > seconds
        }

    def __contains__(self, tp: object) -> bool:
        return tp in self._parts

    def __len__(self) -> int:
        return len(self._parts)
