"""Which buffered request takes the next free engine slot: pure policy, no IO.

Strict priority by tier with aging: a request's effective priority improves by one tier for
every ``aging_s`` it has waited, so a low request cannot starve behind a steady urgent stream.
Each tier's buffer is bounded; a full tier asks the IO layer to pause its partitions.

Within a tier, requests wait per *origin* (the request's ``source``, the producing
service). Which origin's head is next is decided by weighted fair share
(:class:`~consumer.core.fairshare.FairShare`), or by arrival order when ``fair`` is off;
each origin stays FIFO. ``max_running_per_origin`` caps the engine slots one origin holds
(its requests wait while it is at the cap, even with slots free), and
``max_buffered_per_origin`` caps the places one origin holds in a tier's buffer. Over that
cap, with ``refuse_over_share`` the IO layer answers its requests REJECTED
(:meth:`admits`, :meth:`push_refused`); without it the partitions its buffered requests came
from are paused (:meth:`crowding`) — which holds only that source back when producers
partition by source, and the tier's capacity stays the hard bound either way.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from consumer.core.fairshare import FairShare

__all__ = ["Buffered", "TierScheduler"]

T = TypeVar("T")


@dataclass(slots=True)
class Buffered(Generic[T]):
    """One waiting item: its payload, tier priority (0 = urgent), arrival time, the
    partition it came from (``source``) and the service that sent it (``origin``)."""

    item: T
    priority: int
    arrived: float
    source: Hashable = None
    seq: int = 0
    origin: str = ""
    refused: bool = False


@dataclass
class TierScheduler(Generic[T]):
    """Bounded per-tier buffers with priority + aging across tiers, fair share within."""

    tiers: int = 4
    capacity_per_tier: int = 64
    aging_s: float = 30.0
    fair: bool = True
    weights: Mapping[str, float] = field(default_factory=dict)
    max_running_per_origin: int | None = None
    max_buffered_per_origin: int | None = None
    refuse_over_share: bool = False
    _queues: list[dict[str, deque[Buffered[T]]]] = field(init=False)
    _refused: list[deque[Buffered[T]]] = field(init=False)
    _shares: list[FairShare] = field(init=False)
    _running: dict[str, int] = field(init=False, default_factory=dict)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.tiers < 1 or self.capacity_per_tier < 1 or self.aging_s <= 0:
            raise ValueError("tiers, capacity_per_tier and aging_s must be positive")
        self._queues = [{} for _ in range(self.tiers)]
        self._refused = [deque() for _ in range(self.tiers)]
        self._shares = [FairShare(self.weights) for _ in range(self.tiers)]

    @classmethod
    def with_total_capacity(
        cls, total: int, *, tiers: int = 4, aging_s: float = 30.0
    ) -> TierScheduler[T]:
        """Split ``total`` (MAX_QUEUE_SIZE) evenly across tiers, at least one each."""
        return cls(tiers=tiers, capacity_per_tier=max(1, total // tiers), aging_s=aging_s)

    # ------------------------------------------------------------------ buffering
    def admits(self, priority: int, origin: str) -> bool:
        """May one more request of ``origin`` be buffered in this tier?"""
        if self.max_buffered_per_origin is None or not self.refuse_over_share:
            return True
        queue = self._queues[priority].get(origin)
        return queue is None or len(queue) < self.max_buffered_per_origin

    def crowding(self) -> set[Hashable]:
        """Partitions to pause: those holding requests of an origin at its buffer cap."""
        cap = self.max_buffered_per_origin
        if cap is None or self.refuse_over_share:
            return set()
        return {
            entry.source
            for tier in self._queues
            for queue in tier.values()
            if len(queue) >= cap
            for entry in queue
        }

    def fetch_room(self, priority: int) -> int:
        """How many records one fetch may bring into this tier: its free room and, with a
        per-origin cap that pauses, no more than the fullest unpaused origin has left (any
        fetched record may be that origin's), so no fetch carries an origin far past it."""
        room = self.free(priority)
        cap = self.max_buffered_per_origin
        if cap is None or self.refuse_over_share or not room:
            return room
        below = [len(q) for q in self._queues[priority].values() if len(q) < cap]
        return min(room, cap - max(below, default=0))

    def push(
        self, item: T, priority: int, now: float, source: Hashable = None, origin: str = ""
    ) -> None:
        """Buffer ``item``. Never refuses: callers check :meth:`is_full` before fetching
        and :meth:`admits` before pushing."""
        self._seq += 1
        self._append(Buffered(item, priority, now, source, self._seq, origin), front=False)

    def push_refused(
        self, item: T, priority: int, now: float, source: Hashable = None, origin: str = ""
    ) -> None:
        """Buffer an item that is to be answered without inference; it is picked first and
        counts towards its tier's fill (so the buffer stays bounded)."""
        self._seq += 1
        self._refused[priority].append(
            Buffered(item, priority, now, source, self._seq, origin, refused=True)
        )

    def push_front(self, entry: Buffered[T]) -> None:
        """Return a popped entry to the head of its queue (e.g. a retry), keeping its age."""
        if entry.refused:
            self._refused[entry.priority].appendleft(entry)
        else:
            self._append(entry, front=True)

    def _append(self, entry: Buffered[T], *, front: bool) -> None:
        tier = self._queues[entry.priority]
        queue = tier.get(entry.origin)
        if queue is None:
            self._shares[entry.priority].activate(entry.origin, tier)
            queue = tier[entry.origin] = deque()
        if front:
            queue.appendleft(entry)
        else:
            queue.append(entry)

    # ------------------------------------------------------------------ picking
    def effective_priority(self, entry: Buffered[T], now: float) -> int:
        """Tier priority minus one step per ``aging_s`` waited, floored at 0."""
        promoted = math.floor(max(0.0, now - entry.arrived) / self.aging_s)
        return max(0, entry.priority - promoted)

    def _eligible(self, origin: str) -> bool:
        cap = self.max_running_per_origin
        return cap is None or self._running.get(origin, 0) < cap

    def _tier_head(self, tier: int) -> Buffered[T] | None:
        if self._refused[tier]:
            return self._refused[tier][0]
        candidates = [
            (origin, queue[0].seq)
            for origin, queue in self._queues[tier].items()
            if self._eligible(origin)
        ]
        if not candidates:
            return None
        if self.fair:
            chosen = self._shares[tier].choose(candidates)
        else:
            chosen = min(candidates, key=lambda c: c[1])[0]
        return None if chosen is None else self._queues[tier][chosen][0]

    def _best(self, now: float) -> Buffered[T] | None:
        best: tuple[int, int, float, int] | None = None  # (refusal?, priority, age, seq)
        chosen = None
        for tier in range(self.tiers):
            head = self._tier_head(tier)
            if head is None:
                continue
            # Refusals first: answering them costs no inference and frees buffer room.
            key = (
                0 if head.refused else 1,
                self.effective_priority(head, now),
                head.arrived,
                head.seq,
            )
            if best is None or key < best:
                best, chosen = key, head
        return chosen

    def peek(self, now: float) -> Buffered[T] | None:
        """The entry :meth:`pick` would return now, left in place."""
        return self._best(now)

    def pick(self, now: float) -> Buffered[T] | None:
        """Remove and return the entry that should run next, or None when none may.

        The caller reports the end of the entry's engine attempt with :meth:`done`.
        """
        entry = self._best(now)
        if entry is None:
            return None
        if entry.refused:
            self._refused[entry.priority].popleft()
        else:
            tier = self._queues[entry.priority]
            queue = tier[entry.origin]
            queue.popleft()
            if not queue:
                del tier[entry.origin]
            self._shares[entry.priority].served(entry.origin)
            if not tier:
                self._shares[entry.priority].forget(())
        self._running[entry.origin] = self._running.get(entry.origin, 0) + 1
        return entry

    def done(self, entry: Buffered[T]) -> None:
        """A picked entry left the engine (answered, or back in the buffer for a retry)."""
        left = self._running.get(entry.origin, 0) - 1
        if left > 0:
            self._running[entry.origin] = left
        else:
            self._running.pop(entry.origin, None)

    def running(self, origin: str) -> int:
        """Picked, not yet done entries of ``origin``."""
        return self._running.get(origin, 0)

    # ------------------------------------------------------------------ removal, views
    def _entries(self, tier: int) -> list[Buffered[T]]:
        return [*self._refused[tier], *(e for q in self._queues[tier].values() for e in q)]

    def drop_sources(self, sources: Iterable[Hashable]) -> list[Buffered[T]]:
        """Remove every entry from the given sources (revoked partitions); return them."""
        gone = set(sources)
        dropped: list[Buffered[T]] = []
        for tier in range(self.tiers):
            dropped.extend(e for e in self._refused[tier] if e.source in gone)
            self._refused[tier] = deque(e for e in self._refused[tier] if e.source not in gone)
            queues = self._queues[tier]
            for origin in list(queues):
                dropped.extend(e for e in queues[origin] if e.source in gone)
                keep = deque(e for e in queues[origin] if e.source not in gone)
                if keep:
                    queues[origin] = keep
                else:
                    del queues[origin]
        return dropped

    def drain_all(self) -> list[Buffered[T]]:
        """Remove and return everything buffered."""
        out = [e for tier in range(self.tiers) for e in self._entries(tier)]
        for tier in range(self.tiers):
            self._refused[tier].clear()
            self._queues[tier].clear()
            self._shares[tier].forget(())
        return out

    def depth(self, priority: int) -> int:
        """Entries buffered in one tier."""
        return len(self._refused[priority]) + sum(len(q) for q in self._queues[priority].values())

    def origin_depths(self, priority: int) -> dict[str, int]:
        """Buffered entries per origin in one tier (refusals not counted)."""
        return {o: len(q) for o, q in self._queues[priority].items()}

    def free(self, priority: int) -> int:
        """Room left in one tier (0 when at or over capacity)."""
        return max(0, self.capacity_per_tier - self.depth(priority))

    def is_full(self, priority: int) -> bool:
        """True when the tier's partitions should be paused."""
        return self.depth(priority) >= self.capacity_per_tier

    def __len__(self) -> int:
        return sum(self.depth(tier) for tier in range(self.tiers))
