"""The transcription of KEDA's Kafka scaler, with plain values (see keda_scaler.py)."""

from __future__ import annotations

from tests.deploy.keda_scaler import (
    INVALID_OFFSET,
    desired_replicas,
    partition_lag,
    trigger_metric,
)


def test_partition_lag_without_a_committed_offset_follows_the_reset_policy() -> None:
    assert partition_lag(7, 10) == 3
    assert partition_lag(INVALID_OFFSET, 10) == 10  # earliest: every retained record
    assert partition_lag(INVALID_OFFSET, 10, 4) == 6  # from the log start (KEDA >= 2.21)
    assert partition_lag(INVALID_OFFSET, 10, offset_reset_policy="latest") == 1
    assert partition_lag(INVALID_OFFSET, 10, scale_to_zero_on_invalid_offset=True) == 0


def test_the_metric_is_capped_at_partitions_times_threshold() -> None:
    offsets = {0: (0, 0, 20), 1: (INVALID_OFFSET, 0, 10), 2: (5, 0, 10)}
    capped = trigger_metric(offsets, lag_threshold=5)
    assert (capped.lag, capped.metric, capped.replicas) == (35, 15, 3)
    idle = trigger_metric(offsets, lag_threshold=5, allow_idle_consumers=True)
    assert (idle.metric, idle.replicas) == (35, 7)


def test_limit_to_partitions_with_lag_caps_at_the_lagging_partitions() -> None:
    offsets = {0: (0, 0, 0), 1: (0, 0, 1200), 2: (INVALID_OFFSET, 0, 0)}
    limited = trigger_metric(offsets, lag_threshold=500, limit_to_partitions_with_lag=True)
    assert (limited.lag, limited.partitions_with_lag, limited.metric) == (1200, 1, 500)
    assert limited.replicas == 1
    assert trigger_metric(offsets, lag_threshold=500).replicas == 3


def test_go_integer_division_lets_the_ask_exceed_partitions_by_one() -> None:
    # 101 // 5 = 20 is not above 20 partitions: no cap, and ceil(101 / 5) = 21.
    offsets = {p: (0, 0, 5) for p in range(20)} | {0: (0, 0, 6)}
    assert trigger_metric(offsets, lag_threshold=5).replicas == 21


def test_activation_uses_the_uncapped_lag() -> None:
    assert not trigger_metric({0: (0, 0, 5)}, lag_threshold=100, activation_lag_threshold=5).active
    assert trigger_metric({0: (0, 0, 6)}, lag_threshold=100, activation_lag_threshold=5).active


def test_the_hpa_follows_the_largest_ask_within_bounds() -> None:
    assert desired_replicas([3, 0, 1, 1], min_replicas=1, max_replicas=8) == 3
    assert desired_replicas([0, 0], min_replicas=1, max_replicas=8) == 1
    assert desired_replicas([12], min_replicas=1, max_replicas=8) == 8
