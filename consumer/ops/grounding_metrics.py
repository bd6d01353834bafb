"""Grounding metrics: what the checker found in the model's answers and who answered.

A mixin of :class:`~consumer.ops.metrics.Metrics` (it needs the ``registry`` attribute).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from consumer.core.grounding import CHECKS, Report
from schemas.models import Grounding, GroundingSource

__all__ = ["GroundingMetrics"]

_TIERS: tuple[str, ...] = ("urgent", "high", "normal", "low")
_OUTCOMES = ("pass", "fail", "skip")


class GroundingMetrics:
    """``explainstream_grounding_checks_total{check,outcome}`` (one count per check of each
    model answer) and ``explainstream_grounding_results_total{priority,source,grounded}``
    (one per published OK result that was checked)."""

    registry: CollectorRegistry

    _grounding_series: tuple[Counter, Counter] | None = None

    def _grounding(self) -> tuple[Counter, Counter]:
        if self._grounding_series is None:
            checks = Counter(
                "explainstream_grounding_checks",
                "Grounding checks of model answers by check and outcome (pass, fail, skip)",
                ["check", "outcome"],
                registry=self.registry,
            )
            results = Counter(
                "explainstream_grounding_results",
                "Checked OK results by tier, author (model or template) and verdict",
                ["priority", "source", "grounded"],
                registry=self.registry,
            )
            for name in CHECKS:
                for outcome in _OUTCOMES:
                    checks.labels(check=name, outcome=outcome)
            for tier in _TIERS:
                results.labels(priority=tier, source="model", grounded="true")
                results.labels(priority=tier, source="model", grounded="false")
                results.labels(priority=tier, source="template", grounded="true")
            self._grounding_series = (checks, results)
        return self._grounding_series

    def observe_grounding(
        self, tier: str, reports: Iterable[Report], grounding: Grounding | None
    ) -> None:
        """Count the checks of each model answer and the published result's verdict."""
        checks, results = self._grounding()
        for report in reports:
            for name, outcome in report.outcomes.items():
                checks.labels(check=name, outcome=outcome).inc()
        if grounding is not None:
            source = "template" if grounding.source is GroundingSource.TEMPLATE else "model"
            grounded = "true" if grounding.grounded else "false"
            results.labels(priority=tier, source=source, grounded=grounded).inc()
