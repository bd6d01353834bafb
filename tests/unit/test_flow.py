"""Intake and dispatch decisions: pauses, fetch budget, bounded urgent overcommit."""

from __future__ import annotations

from consumer.core.flow import desired_pauses, fetch_budget, may_dispatch

TIER_OF = {"u0": 0, "h0": 1, "n0": 2, "n1": 2, "l0": 3}


def test_breaker_open_pauses_everything() -> None:
    assert desired_pauses(TIER_OF, full_tiers=[], breaker_open=True) == set(TIER_OF)


def test_full_tiers_held_and_over_cap_partitions_are_paused() -> None:
    paused = desired_pauses(
        TIER_OF,
        full_tiers=[2],
        breaker_open=False,
        hold={"u0"},
        uncommitted={"l0": 10, "h0": 9},
        max_uncommitted=10,
    )
    assert paused == {"n0", "n1", "u0", "l0"}


def test_nothing_paused_when_there_is_room() -> None:
    assert desired_pauses(TIER_OF, full_tiers=[], breaker_open=False) == set()


def test_fetch_budget_is_the_least_room_among_fetchable_tiers() -> None:
    free = [10, 3, 50, 0]
    assert fetch_budget(free, {0, 1, 2}) == 3
    assert fetch_budget(free, {2}) == 50
    assert fetch_budget(free, {2}, cap=20) == 20
    assert fetch_budget(free, set()) == 0
    assert fetch_budget(free, {2}, partition_rooms=[7, 4]) == 4


def test_dispatch_fills_free_slots_only_while_admitting() -> None:
    assert may_dispatch(busy=0, slots=2, head_priority=3, overcommit=2, admitting=True)
    assert not may_dispatch(busy=0, slots=2, head_priority=3, overcommit=2, admitting=False)
    assert not may_dispatch(busy=0, slots=2, head_priority=None, overcommit=2, admitting=True)


def test_only_urgent_heads_overcommit_and_only_up_to_the_bound() -> None:
    assert not may_dispatch(busy=2, slots=2, head_priority=1, overcommit=2, admitting=True)
    assert may_dispatch(busy=2, slots=2, head_priority=0, overcommit=2, admitting=True)
    assert may_dispatch(busy=3, slots=2, head_priority=0, overcommit=2, admitting=True)
    assert not may_dispatch(busy=4, slots=2, head_priority=0, overcommit=2, admitting=True)
    assert not may_dispatch(busy=2, slots=2, head_priority=0, overcommit=0, admitting=True)
