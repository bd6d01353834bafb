"""Seconds of queued work per tier, estimated from lag and recent service times (pure)."""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LagSecondsEstimator"]


class LagSecondsEstimator:
    """Estimated seconds of queued work per tier: lag x recent mean service time.

    Pure: feed it service times with :meth:`observe`; :meth:`estimate` converts a lag in
    records to seconds. A tier with no recent observations borrows the mean over all tiers,
    and with none at all ``default_service_s``. ``parallelism`` divides the result (e.g. the
    number of engine slots) to express time-to-drain for one instance.
    """

    def __init__(self, window: int = 100, default_service_s: float = 1.0) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._window = window
        self._default = default_service_s
        self._samples: dict[str, deque[float]] = {}

    def observe(self, tier: str, service_s: float) -> None:
        """Record one request's service (processing) time in seconds."""
        if service_s < 0 or math.isnan(service_s):
            return
        self._samples.setdefault(tier, deque(maxlen=self._window)).append(service_s)

    def mean(self, tier: str) -> float:
        """Recent mean service time of ``tier`` (with the fallbacks described above)."""
        own = self._samples.get(tier)
        if own:
            return sum(own) / len(own)
        every = [s for q in self._samples.values() for s in q]
        if every:
            return sum(every) / len(every)
        return self._default

    def estimate(self, tier: str, lag: int, parallelism: int = 1) -> float:
        """Seconds of work represented by ``lag`` records of ``tier``."""
        return max(lag, 0) * self.mean(tier) / max(parallelism, 1)
