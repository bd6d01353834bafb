"""Which buffered request takes the next free engine slot: pure policy, no IO.

Strict priority by tier with aging: a request's effective priority improves by one tier for
every ``aging_s`` it has waited, so a low request cannot starve behind a steady urgent stream.
Each tier's buffer is bounded; a full tier asks the IO layer to pause its partitions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Buffered", "TierScheduler"]

T = TypeVar("T")


@dataclass(slots=True)
class Buffered(Generic[T]):
    """One waiting item: its payload, tier priority (0 = urgent) and arrival time."""

    item: T
    priority: int
    arrived: float
    source: Hashable = None
    seq: int = 0


@dataclass
class TierScheduler(Generic[T]):
    """Bounded per-tier FIFO buffers with priority + aging selection."""

    tiers: int = 4
    capacity_per_tier: int = 64
    aging_s: float = 30.0
    _queues: list[deque[Buffered[T]]] = field(init=False)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.tiers < 1 or self.capacity_per_tier < 1 or self.aging_s <= 0:
            raise ValueError("tiers, capacity_per_tier and aging_s must be positive")
        self._queues = [deque() for _ in range(self.tiers)]

    @classmethod
    def with_total_capacity(
        cls, total: int, *, tiers: int = 4, aging_s: float = 30.0
    ) -> TierScheduler[T]:
        """Split ``total`` (MAX_QUEUE_SIZE) evenly across tiers, at least one each."""
        return cls(tiers=tiers, capacity_per_tier=max(1, total // tiers), aging_s=aging_s)

    def push(self, item: T, priority: int, now: float, source: Hashable = None) -> None:
        """Buffer ``item``. Never refuses: callers check :meth:`is_full` before fetching."""
        self._seq += 1
        self._queues[priority].append(Buffered(item, priority, now, source, self._seq))

    def push_front(self, entry: Buffered[T]) -> None:
        """Return a popped entry to the head of its tier (e.g. a retry), keeping its age."""
        self._queues[entry.priority].appendleft(entry)

    def effective_priority(self, entry: Buffered[T], now: float) -> int:
        """Tier priority minus one step per ``aging_s`` waited, floored at 0."""
        promoted = math.floor(max(0.0, now - entry.arrived) / self.aging_s)
        return max(0, entry.priority - promoted)

    def _best_tier(self, now: float) -> int:
        best: tuple[int, float, int] | None = None
        best_tier = -1
        for tier, queue in enumerate(self._queues):
            if not queue:
                continue
            head = queue[0]
            key = (self.effective_priority(head, now), head.arrived, head.seq)
            if best is None or key < best:
                best, best_tier = key, tier
        return best_tier

    def peek(self, now: float) -> Buffered[T] | None:
        """The entry :meth:`pick` would return now, left in place."""
        tier = self._best_tier(now)
        return self._queues[tier][0] if tier >= 0 else None

    def pick(self, now: float) -> Buffered[T] | None:
        """Remove and return the entry that should run next, or None when empty."""
        tier = self._best_tier(now)
        return self._queues[tier].popleft() if tier >= 0 else None

    def drop_sources(self, sources: Iterable[Hashable]) -> list[Buffered[T]]:
        """Remove every entry from the given sources (revoked partitions); return them."""
        gone = set(sources)
        dropped: list[Buffered[T]] = []
        for i, queue in enumerate(self._queues):
            keep = deque(e for e in queue if e.source not in gone)
            dropped.extend(e for e in queue if e.source in gone)
            self._queues[i] = keep
        return dropped

    def drain_all(self) -> list[Buffered[T]]:
        """Remove and return everything buffered."""
        out = [e for q in self._queues for e in q]
        for q in self._queues:
            q.clear()
        return out

    def depth(self, priority: int) -> int:
        """Entries buffered in one tier."""
        return len(self._queues[priority])

    def free(self, priority: int) -> int:
        """Room left in one tier (0 when at or over capacity)."""
        return max(0, self.capacity_per_tier - len(self._queues[priority]))

    def is_full(self, priority: int) -> bool:
        """True when the tier's partitions should be paused."""
        return len(self._queues[priority]) >= self.capacity_per_tier

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)
