"""What KEDA's Kafka scaler reports for a consumer group, and what the HPA then asks for.

A plain-value transcription of ``pkg/scalers/kafka_scaler.go`` of the Go module
``github.com/kedacore/keda/v2@v2.21.0`` (the release whose CRDs the validators use):

* ``getLagForPartition``: lag = latest offset - committed offset. With no committed offset
  (-1): policy ``latest`` counts 1 (0 with ``scaleToZeroOnInvalidOffset``); policy
  ``earliest`` counts the retained records, ``max(0, latest - earliest)`` (0 with
  ``scaleToZeroOnInvalidOffset``). Releases before 2.21 counted ``latest`` there, from
  offset 0 rather than from the log start: the same until retention deletes a head.
* ``getTotalLag``: the sum over the trigger's partitions. Unless ``allowIdleConsumers`` (or
  with ``limitToPartitionsWithLag``), the metric is capped: ``if totalLag/lagThreshold >
  upperBound { totalLag = upperBound * lagThreshold }`` in Go integer division, where
  ``upperBound`` is the partition count, or the partitions with lag > 0 under
  ``limitToPartitionsWithLag``.
* ``GetMetricsAndActivity``: the metric is that total; the trigger is active when the lag
  (before the cap) exceeds ``activationLagThreshold``.

The HPA gets the metric as an ``AverageValue`` target of ``lagThreshold``, so one trigger
asks for ``ceil(metric / lagThreshold)`` replicas; KEDA's HPA follows the largest ask,
clamped to [minReplicaCount, maxReplicaCount] (``scalingModifiers`` replace the maximum by a
formula). ``explainstream lag`` also counts a partition without a committed offset from its
log start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "INVALID_OFFSET",
    "TriggerMetric",
    "desired_replicas",
    "fallback_replicas",
    "partition_lag",
    "trigger_metric",
]

INVALID_OFFSET = -1


def partition_lag(
    committed: int,
    latest: int,
    earliest: int = 0,
    *,
    offset_reset_policy: str = "earliest",
    scale_to_zero_on_invalid_offset: bool = False,
) -> int:
    """KEDA's ``getLagForPartition`` (without ``excludePersistentLag``)."""
    if committed == INVALID_OFFSET:
        if offset_reset_policy == "latest":
            return 0 if scale_to_zero_on_invalid_offset else 1
        return 0 if scale_to_zero_on_invalid_offset else max(0, latest - earliest)
    return latest - committed


@dataclass(frozen=True)
class TriggerMetric:
    """One Kafka trigger's view of a topic: the metric it reports and the replicas it asks."""

    lag: int  # summed lag before the cap
    metric: int  # what KEDA reports to the HPA
    partitions: int
    partitions_with_lag: int
    replicas: int  # ceil(metric / lagThreshold)
    active: bool


def trigger_metric(
    offsets: Mapping[int, tuple[int, int, int]],
    *,
    lag_threshold: int,
    activation_lag_threshold: int = 0,
    allow_idle_consumers: bool = False,
    limit_to_partitions_with_lag: bool = False,
    offset_reset_policy: str = "earliest",
) -> TriggerMetric:
    """KEDA's ``getTotalLag`` + ``GetMetricsAndActivity`` for one topic.

    ``offsets`` maps partition -> (committed offset or -1, earliest offset, latest offset).
    """
    lags = [
        partition_lag(committed, latest, earliest, offset_reset_policy=offset_reset_policy)
        for committed, earliest, latest in offsets.values()
    ]
    total = sum(lags)
    with_lag = sum(1 for lag in lags if lag > 0)
    metric = total
    if not allow_idle_consumers or limit_to_partitions_with_lag:
        upper = with_lag if limit_to_partitions_with_lag else len(lags)
        if total // lag_threshold > upper:  # Go's int64 division
            metric = upper * lag_threshold
    return TriggerMetric(
        lag=total,
        metric=metric,
        partitions=len(lags),
        partitions_with_lag=with_lag,
        replicas=math.ceil(metric / lag_threshold),
        active=total > activation_lag_threshold,
    )


def desired_replicas(asks: list[int], *, min_replicas: int, max_replicas: int) -> int:
    """The HPA over KEDA's triggers: the largest ask, within the ScaledObject's bounds."""
    return max(min_replicas, min(max_replicas, max(asks, default=0)))


def fallback_replicas(behavior: str, *, current: int, fallback: int) -> int:
    """Replicas KEDA's fallback holds once a trigger failed ``failureThreshold`` times
    (``pkg/fallback/fallback.go``): it reports ``replicas x target`` as the metric, so the
    HPA lands on ``replicas``; with ``scalingModifiers`` that replaces the whole formula."""
    if behavior == "static":
        return fallback
    if behavior == "currentReplicas":
        return current
    if behavior == "currentReplicasIfHigher":
        return max(current, fallback)
    if behavior == "currentReplicasIfLower":
        return min(current, fallback)
    raise ValueError(f"unknown fallback behavior {behavior!r}")
