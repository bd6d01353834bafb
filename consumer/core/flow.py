"""Flow decisions of the intake and the dispatcher: pure functions of plain values.

* :func:`desired_pauses` — which assigned partitions the intake must pause this pass;
* :func:`fetch_budget` — how many records one fetch may return without overfilling a tier;
* :func:`may_dispatch` — may the next buffered request go to the engine now (with bounded
  overcommit for urgent work, so the engine can preempt a less urgent sequence).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

__all__ = ["URGENT", "desired_pauses", "fetch_budget", "may_dispatch"]

#: Effective priority that may overcommit the engine (the scheduler's tier 0, after aging).
URGENT = 0

P = TypeVar("P", bound=Hashable)


def desired_pauses(
    tier_of: Mapping[P, int],
    *,
    full_tiers: Iterable[int],
    breaker_open: bool,
    hold: Iterable[P] = (),
    uncommitted: Mapping[P, int] | None = None,
    max_uncommitted: int | None = None,
) -> set[P]:
    """Partitions to pause: all while the breaker is open, those of full tiers, those the
    caller holds (revoking, not ready, lost, waiting to retry a decode) and those whose
    taken-but-uncommitted records reached ``max_uncommitted``."""
    if breaker_open:
        return set(tier_of)
    full = set(full_tiers)
    held = set(hold)
    out: set[P] = set()
    for tp, tier in tier_of.items():
        if (
            tier in full
            or tp in held
            or (
                uncommitted is not None
                and max_uncommitted is not None
                and uncommitted.get(tp, 0) >= max_uncommitted
            )
        ):
            out.add(tp)
    return out


def fetch_budget(
    free: Sequence[int],
    fetchable_tiers: Iterable[int],
    cap: int = 100,
    partition_rooms: Iterable[int] = (),
) -> int:
    """``max_records`` for one fetch: the least room among the fetchable tiers (and the
    fetchable partitions' room under MAX_UNCOMMITTED_PER_PARTITION).

    Any fetchable partition may fill the whole fetch, so only the smallest room is safe.
    0 means "fetch nothing" (the caller still polls, with ``max_records=1`` on paused
    partitions only, to stay a live group member).
    """
    rooms = [free[t] for t in set(fetchable_tiers)]
    if not rooms:
        return 0
    rooms.extend(partition_rooms)
    return max(0, min(min(rooms), cap))


def may_dispatch(
    *,
    busy: int,
    slots: int,
    head_priority: int | None,
    overcommit: int,
    admitting: bool,
) -> bool:
    """May the scheduler's head go to the engine now?

    Up to ``slots`` at once; an URGENT head (effective priority, after aging) may take up to
    ``overcommit`` more, which a batching engine serves by preempting its least urgent
    sequence. Nothing goes while ``admitting`` is False (breaker without a free probe,
    reload draining).
    """
    if head_priority is None or not admitting:
        return False
    if busy < slots:
        return True
    return head_priority <= URGENT and busy < slots + overcommit
