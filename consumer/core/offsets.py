"""Which offsets may be committed: pure bookkeeping, no IO.

Requests complete out of order; a partition's commit position is the lowest offset still
outstanding, or the consumer's fetch position when nothing is outstanding (that skips
transaction control records, which are never delivered as messages).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

__all__ = ["OffsetTracker"]


@dataclass
class _Partition:
    outstanding: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    position: int | None = None
    committed: int | None = None
    finished: deque[int] = field(default_factory=deque)  # done, in the prefix, not committed


class OffsetTracker:
    """Tracks started/done offsets per partition and yields safe commit positions."""

    def __init__(self) -> None:
        self._parts: dict[Hashable, _Partition] = {}

    def started(self, tp: Hashable, offset: int) -> None:
        """A record at ``offset`` was taken from ``tp``; offsets must increase per partition."""
        part = self._parts.setdefault(tp, _Partition())
        if part.outstanding and offset <= part.outstanding[-1]:
            raise ValueError(f"offset {offset} of {tp} is not after {part.outstanding[-1]}")
        part.outstanding.append(offset)
        part.position = max(part.position or 0, offset + 1)

    def done(self, tp: Hashable, offset: int) -> None:
        """The record at ``offset`` is fully handled (result or DLQ record acknowledged)."""
        part = self._parts.get(tp)
        if part is None:
            return  # partition was revoked meanwhile; nothing to commit for it here
        part.done.add(offset)
        while part.outstanding and part.outstanding[0] in part.done:
            first = part.outstanding.popleft()
            part.done.discard(first)
            part.finished.append(first)

    def fetched_up_to(self, tp: Hashable, position: int) -> None:
        """The consumer's position for ``tp`` (next offset it will fetch)."""
        part = self._parts.setdefault(tp, _Partition())
        part.position = max(part.position or 0, position)

    def commit_position(self, tp: Hashable) -> int | None:
        """The offset to commit for ``tp`` (next to process), or None when unknown."""
        part = self._parts.get(tp)
        if part is None:
            return None
        if part.outstanding:
            return part.outstanding[0]
        return part.position

    def to_commit(self, tps: Iterable[Hashable] | None = None) -> dict[Hashable, int]:
        """Positions that advanced past the last commit, for the given (or all) partitions."""
        out: dict[Hashable, int] = {}
        for tp in self._parts if tps is None else tps:
            pos = self.commit_position(tp)
            part = self._parts.get(tp)
            if (
                pos is not None
                and part is not None
                and (part.committed is None or pos > part.committed)
            ):
                out[tp] = pos
        return out

    def committed(self, positions: dict[Hashable, int]) -> None:
        """Record that ``positions`` were committed; a late, lower report never moves it back."""
        for tp, pos in positions.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or pos > part.committed):
                part.committed = pos
                while part.finished and part.finished[0] < pos:
                    part.finished.popleft()

    def uncommitted(self, tp: Hashable) -> int:
        """Records of ``tp`` taken and not yet committed: buffered, running, publishing,
        done behind an unfinished lower offset, or done and waiting for the next commit."""
        part = self._parts.get(tp)
        return len(part.outstanding) + len(part.finished) if part else 0

    def outstanding(self, tp: Hashable) -> int:
        """How many records of ``tp`` are taken but not done."""
        part = self._parts.get(tp)
        return len(part.outstanding) if part else 0

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Drop state of revoked partitions."""
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[Hashable]:
        """Partitions currently tracked."""
        return list(self._parts)
