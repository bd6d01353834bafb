"""The tier scheduler: strict priority, aging, bounded buffers."""

from __future__ import annotations

import pytest

from consumer.core.scheduler import TierScheduler


def test_strict_priority_then_fifo_within_a_tier() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10, aging_s=100)
    s.push("low-1", 3, now=0.0)
    s.push("normal-1", 2, now=1.0)
    s.push("urgent-1", 0, now=2.0)
    s.push("urgent-2", 0, now=3.0)
    picked = [s.pick(now=4.0) for _ in range(4)]
    assert [e.item for e in picked if e] == ["urgent-1", "urgent-2", "normal-1", "low-1"]
    assert s.pick(now=5.0) is None


def test_aging_promotes_a_waiting_low_request() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10, aging_s=1.0)
    s.push("low", 3, now=0.0)
    s.push("urgent", 0, now=2.9)
    # After 3 s the low request has been promoted three tiers and is older than urgent.
    first = s.pick(now=3.0)
    assert first is not None and first.item == "low"


def test_no_starvation_under_a_steady_urgent_stream() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=1000, aging_s=0.5)
    s.push("low", 3, now=0.0)
    now = 0.0
    served: list[str] = []
    for i in range(100):
        now += 0.05
        s.push(f"u{i}", 0, now=now)
        entry = s.pick(now=now)
        assert entry is not None
        served.append(entry.item)
    assert "low" in served


def test_full_tier_reports_full_and_free_counts() -> None:
    s: TierScheduler[int] = TierScheduler.with_total_capacity(8, tiers=4)
    assert s.capacity_per_tier == 2
    s.push(1, 3, now=0)
    assert not s.is_full(3) and s.free(3) == 1
    s.push(2, 3, now=0)
    assert s.is_full(3) and s.free(3) == 0 and s.free(0) == 2
    assert len(s) == 2


def test_drop_sources_removes_revoked_partitions_only() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10)
    s.push("a", 1, now=0, source="p0")
    s.push("b", 1, now=0, source="p1")
    s.push("c", 2, now=0, source="p0")
    dropped = s.drop_sources({"p0"})
    assert sorted(e.item for e in dropped) == ["a", "c"]
    remaining = s.pick(now=1)
    assert remaining is not None and remaining.item == "b"


def test_push_front_keeps_age_for_retries() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10, aging_s=100)
    s.push("first", 2, now=0)
    s.push("second", 2, now=1)
    entry = s.pick(now=2)
    assert entry is not None
    s.push_front(entry)
    again = s.pick(now=3)
    assert again is not None and again.item == "first" and again.arrived == 0


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TierScheduler(capacity_per_tier=0)


def test_peek_shows_the_next_pick_without_removing_it() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10, aging_s=1.0)
    assert s.peek(0.0) is None
    s.push("low", 3, now=0.0)
    s.push("high", 1, now=0.5)
    head = s.peek(0.6)
    assert head is not None and head.item == "high" and len(s) == 2
    assert s.effective_priority(head, 0.6) == 1
    aged = s.peek(5.0)  # the low one aged to priority 0 and is older
    assert aged is not None and aged.item == "low"
    assert s.effective_priority(aged, 5.0) == 0
    picked = s.pick(5.0)
    assert picked is aged
