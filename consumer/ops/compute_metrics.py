"""Compute accounting metrics: engine time charged per request, and its cost when priced.

A mixin of :class:`~consumer.ops.metrics.Metrics` (it needs the ``registry`` attribute).
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Summary

__all__ = ["ComputeMetrics"]

_TIERS: tuple[str, ...] = ("urgent", "high", "normal", "low")


class ComputeMetrics:
    """``explainstream_compute_seconds``, ``_compute_cost`` and ``_request_cost`` by tier."""

    registry: CollectorRegistry

    # -- compute accounting (engine time charged per request; COST_PER_GPU_HOUR) ---------

    _compute_series: tuple[Counter, Counter, Summary] | None = None

    def _compute(self) -> tuple[Counter, Counter, Summary]:
        # Created on first use so this block is self-contained; every tier starts at zero.
        if self._compute_series is None:
            reg = self.registry
            seconds = Counter(
                "explainstream_compute_seconds",
                "Engine compute time charged to requests (step time / sequences in the step)",
                ["priority"],
                registry=reg,
            )
            cost = Counter(
                "explainstream_compute_cost",
                "Cost of that compute at COST_PER_GPU_HOUR (currency units)",
                ["priority"],
                registry=reg,
            )
            per_request = Summary(
                "explainstream_request_cost",
                "Cost per request at COST_PER_GPU_HOUR (_sum / _count = mean cost per request)",
                ["priority"],
                registry=reg,
            )
            for tier in _TIERS:
                seconds.labels(priority=tier)
                cost.labels(priority=tier)
                per_request.labels(priority=tier)
            self._compute_series = (seconds, cost, per_request)
        return self._compute_series

    @staticmethod
    def request_cost(compute_s: float, cost_per_gpu_hour: float | None) -> float | None:
        """What ``compute_s`` seconds of engine time cost (None without a price)."""
        if cost_per_gpu_hour is None or compute_s < 0:
            return None
        return compute_s / 3600.0 * cost_per_gpu_hour

    def observe_compute(
        self, tier: str, compute_s: float, cost_per_gpu_hour: float | None = None
    ) -> None:
        """Charge one finished request's compute (and its cost, when priced) to ``tier``."""
        seconds, cost, per_request = self._compute()
        if compute_s < 0 or math.isnan(compute_s):
            return
        seconds.labels(priority=tier).inc(compute_s)
        price = self.request_cost(compute_s, cost_per_gpu_hour)
        if price is not None:
            cost.labels(priority=tier).inc(price)
            per_request.labels(priority=tier).observe(price)
