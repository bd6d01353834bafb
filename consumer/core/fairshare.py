"""Weighted fair share between request sources within one tier: pure policy, no IO.

Stride scheduling: each source has a *pass*; the eligible source with the lowest pass is
served next and its pass advances by ``1 / weight``. Over any busy period each source is
served in proportion to its weight, and a source that goes quiet banks no credit: when it
becomes active again its pass starts at the lowest pass among the active sources, so it
can't then jump ahead of everyone for as long as it was away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["FairShare", "buffer_refusal", "parse_weights", "share_cap"]


def parse_weights(text: str | None) -> dict[str, float]:
    """``"a=2,b=0.5"`` as ``{"a": 2.0, "b": 0.5}``; ValueError on a bad pair or weight <= 0."""
    weights: dict[str, float] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected source=weight, got {pair.strip()!r}")
        weight = float(value)
        if weight <= 0:
            raise ValueError(f"weight of {name.strip()!r} must be positive")
        weights[name.strip()] = weight
    return weights


def share_cap(share: float, total: int) -> int:
    """How many of ``total`` places a ``share`` (0..1] allows one source: at least one."""
    return max(1, int(share * total + 1e-9))


class FairShare:
    """Stride passes of the sources of one tier."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self._pass: dict[str, float] = {}

    def weight(self, source: str) -> float:
        """A source's weight (1 when not configured)."""
        return self.weights.get(source, 1.0)

    def activate(self, source: str, active: Iterable[str]) -> None:
        """``source`` has work again; ``active`` are the other sources with work."""
        floor = min((self._pass.get(s, 0.0) for s in active if s != source), default=None)
        current = self._pass.get(source, 0.0)
        self._pass[source] = current if floor is None else max(current, floor)

    def choose(self, candidates: Iterable[tuple[str, int]]) -> str | None:
        """The source to serve among ``(source, head arrival seq)``: lowest pass, then the
        older head (so equal passes keep arrival order)."""
        best: tuple[float, int] | None = None
        chosen = None
        for source, seq in candidates:
            key = (self._pass.get(source, 0.0), seq)
            if best is None or key < best:
                best, chosen = key, source
        return chosen

    def served(self, source: str) -> None:
        """``source`` took one place: advance its pass."""
        self._pass[source] = self._pass.get(source, 0.0) + 1.0 / self.weight(source)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the passes of sources not in ``keep`` (bounded memory); the lowest kept
        pass becomes 0 so passes never grow without bound."""
        kept = set(keep)
        self._pass = {s: p for s, p in self._pass.items() if s in kept}
        low = min(self._pass.values(), default=0.0)
        self._pass = {s: p - low for s, p in self._pass.items()}

    def pass_of(self, source: str) -> float:
        """A source's current pass (for tests and status)."""
        return self._pass.get(source, 0.0)


def buffer_refusal(origin: str, held: int, cap: int) -> str:
    """The REJECTED reason for a request over its source's share of a tier's buffer."""
    return (
        f"source {origin!r} already holds {held} of its {cap} places in this tier's buffer "
        f"(SOURCE_MAX_BUFFER_SHARE); retry after its backlog drains, or publish with "
        f"partition_by='source' so its backlog waits in its own partitions"
    )
