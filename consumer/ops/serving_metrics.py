"""LLM-serving latency metrics and the build identity.

A mixin of :class:`~consumer.ops.metrics.Metrics` (it needs the ``registry`` attribute).
``explainstream_time_to_first_token_seconds`` and
``explainstream_time_per_output_token_seconds`` come from the engine's own step clock
(:class:`~consumer.engines.base.GenerationResult`), so they measure the engine, not the
asyncio hops around it; ``explainstream_build_info`` says which version is running.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Gauge, Histogram

from schemas.version import __version__

__all__ = ["ServingMetrics"]

_TIERS: tuple[str, ...] = ("urgent", "high", "normal", "low")
# Prefill of a short prompt on a GPU is milliseconds; on a busy CPU several seconds.
_TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0,
)  # fmt: skip
# A decode step of one token: ~1 ms for a small model on a GPU, up to ~1 s in a full CPU batch.
_TPOT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class ServingMetrics:
    """Time to first token, time per output token (by tier) and ``explainstream_build_info``."""

    registry: CollectorRegistry

    _serving_series: tuple[Histogram, Histogram] | None = None
    _build: Gauge

    def _serving(self) -> tuple[Histogram, Histogram]:
        # Created on first use so this block is self-contained; every tier starts at zero.
        if self._serving_series is None:
            reg = self.registry
            ttft = Histogram(
                "explainstream_time_to_first_token_seconds",
                "From the request entering the engine to its first generated token "
                "(engine step clock; waiting for a slot and prefill included)",
                ["priority"],
                buckets=_TTFT_BUCKETS,
                registry=reg,
            )
            tpot = Histogram(
                "explainstream_time_per_output_token_seconds",
                "Mean time between a request's generated tokens after the first "
                "(engine step clock; preemption pauses included)",
                ["priority"],
                buckets=_TPOT_BUCKETS,
                registry=reg,
            )
            for tier in _TIERS:
                ttft.labels(priority=tier)
                tpot.labels(priority=tier)
            self._serving_series = (ttft, tpot)
        return self._serving_series

    def _build_info(self) -> None:
        self._build = Gauge(
            "explainstream_build_info",
            "Always 1; the labels say which explainstream version runs on which backend "
            "(cpu, cuda ... for llama.cpp; the engine's name otherwise; unknown before start)",
            ["version", "backend"],
            registry=self.registry,
        )
        self._build.labels(version=__version__, backend="unknown").set(1)

    def set_backend(self, backend: str) -> None:
        """The backend the engine loaded on, once known: still one build_info series."""
        self._build.clear()
        self._build.labels(version=__version__, backend=backend).set(1)

    def observe_tokens_timing(
        self, tier: str, first_token_s: float | None, per_output_token_s: float | None
    ) -> None:
        """One generation's TTFT and TPOT; None (not measured, or under two tokens) is skipped."""
        ttft, tpot = self._serving()
        if first_token_s is not None and math.isfinite(first_token_s) and first_token_s >= 0:
            ttft.labels(priority=tier).observe(first_token_s)
        if (
            per_output_token_s is not None
            and math.isfinite(per_output_token_s)
            and per_output_token_s >= 0
        ):
            tpot.labels(priority=tier).observe(per_output_token_s)
