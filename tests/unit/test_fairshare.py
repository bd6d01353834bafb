"""Fair share between sources within a tier: weighted picks, slot and buffer caps."""

from __future__ import annotations

import pytest

from consumer.core.fairshare import FairShare, parse_weights, share_cap
from consumer.core.scheduler import TierScheduler


def _flood_then_quiet(s: TierScheduler[str], flood: int, quiet: int) -> None:
    for i in range(flood):
        s.push(f"noisy-{i}", 2, now=0.0, origin="noisy")
    for i in range(quiet):
        s.push(f"quiet-{i}", 2, now=1.0, origin="quiet")


def _order(s: TierScheduler[str], now: float = 2.0) -> list[str]:
    out = []
    while (entry := s.pick(now)) is not None:
        s.done(entry)
        out.append(entry.item)
    return out


def test_equal_weights_alternate_sources_instead_of_arrival_order() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=100, aging_s=1000)
    _flood_then_quiet(s, flood=40, quiet=3)
    order = _order(s)
    # The quiet source's three requests are served 2nd, 4th and 6th, not 41st to 43rd.
    assert [order.index(f"quiet-{i}") for i in range(3)] == [1, 3, 5]
    assert [x for x in order if x.startswith("noisy")] == [f"noisy-{i}" for i in range(40)]


def test_arrival_order_when_fair_share_is_off() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=100, aging_s=1000, fair=False)
    _flood_then_quiet(s, flood=5, quiet=2)
    assert _order(s) == [*(f"noisy-{i}" for i in range(5)), "quiet-0", "quiet-1"]


def test_weights_set_the_proportion_served() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=200, aging_s=1000, weights={"big": 3.0})
    for i in range(60):
        s.push(f"big-{i}", 1, now=0.0, origin="big")
        s.push(f"small-{i}", 1, now=0.0, origin="small")
    first = _order(s)[:40]
    assert sum(x.startswith("big") for x in first) == 30


def test_a_returning_source_banks_no_credit() -> None:
    share = FairShare()
    for _ in range(10):
        share.served("busy")
    share.activate("late", ["busy"])
    assert share.pass_of("late") == share.pass_of("busy")
    assert share.choose([("busy", 1), ("late", 2)]) == "busy"  # equal pass: older head


def test_tiers_still_come_first() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10, aging_s=1000)
    s.push("low-a", 3, now=0.0, origin="a")
    s.push("urgent-b", 0, now=1.0, origin="b")
    assert [e.item for e in (s.pick(2.0), s.pick(2.0)) if e] == ["urgent-b", "low-a"]


def test_slot_cap_holds_a_source_back_until_one_of_its_requests_is_done() -> None:
    s: TierScheduler[str] = TierScheduler(
        capacity_per_tier=10, aging_s=1000, max_running_per_origin=2
    )
    for i in range(4):
        s.push(f"n{i}", 2, now=0.0, origin="noisy")
    first, second = s.pick(1.0), s.pick(1.0)
    assert first is not None and second is not None
    assert s.pick(1.0) is None and s.peek(1.0) is None and s.running("noisy") == 2
    s.push("q0", 2, now=1.0, origin="quiet")
    third = s.pick(1.0)
    assert third is not None and third.item == "q0"
    s.done(first)
    fourth = s.pick(1.0)
    assert fourth is not None and fourth.item == "n2"


def test_buffer_cap_sends_the_excess_to_refusals_that_are_picked_first() -> None:
    s: TierScheduler[str] = TierScheduler(
        capacity_per_tier=4, aging_s=1000, max_buffered_per_origin=2, refuse_over_share=True
    )
    for i in range(3):
        if s.admits(2, "noisy"):
            s.push(f"n{i}", 2, now=0.0, origin="noisy")
        else:
            s.push_refused(f"n{i}", 2, now=0.0, origin="noisy")
    assert s.admits(2, "quiet") and not s.admits(2, "noisy")
    assert s.depth(2) == 3 and s.origin_depths(2) == {"noisy": 2}
    head = s.pick(1.0)
    assert head is not None and head.refused and head.item == "n2"
    s.done(head)
    assert s.admits(2, "noisy") is False and s.free(2) == 2


def test_without_refusals_a_source_at_its_cap_pauses_the_partitions_it_came_from() -> None:
    s: TierScheduler[str] = TierScheduler(
        capacity_per_tier=10, aging_s=1000, max_buffered_per_origin=3
    )
    for i in range(3):
        assert s.admits(2, "noisy")
        s.push(f"n{i}", 2, now=0.0, source=f"p{i % 2}", origin="noisy")
    s.push("q0", 2, now=0.0, source="p2", origin="quiet")
    assert s.crowding() == {"p0", "p1"}
    assert s.fetch_room(2) == 2  # quiet holds 1 of its 3: a fetch may bring 2 more
    entry = s.pick(1.0)
    assert entry is not None and entry.origin == "noisy"
    assert s.crowding() == set()  # below its cap again: its partitions may be read


def test_a_fetch_cannot_carry_an_origin_far_past_its_cap() -> None:
    s: TierScheduler[str] = TierScheduler(
        capacity_per_tier=20, aging_s=1000, max_buffered_per_origin=5
    )
    assert s.fetch_room(1) == 5
    for i in range(4):
        s.push(f"n{i}", 1, now=0.0, origin="noisy")
    assert s.fetch_room(1) == 1
    s.push("n4", 1, now=0.0, origin="noisy")  # at its cap: paused, no longer limits a fetch
    assert s.fetch_room(1) == 5
    refusing = TierScheduler[str](
        capacity_per_tier=20, max_buffered_per_origin=5, refuse_over_share=True
    )
    assert refusing.fetch_room(1) == 20


def test_revoked_partitions_leave_every_origin_queue() -> None:
    s: TierScheduler[str] = TierScheduler(capacity_per_tier=10)
    s.push("a", 1, now=0, source="p0", origin="x")
    s.push("b", 1, now=0, source="p1", origin="y")
    s.push_refused("c", 1, now=0, source="p0", origin="y")
    assert sorted(e.item for e in s.drop_sources({"p0"})) == ["a", "c"]
    assert len(s) == 1 and s.origin_depths(1) == {"y": 1}


def test_weights_and_caps_from_configuration_text() -> None:
    assert parse_weights(" pricing = 3, replay=0.5 ,") == {"pricing": 3.0, "replay": 0.5}
    assert parse_weights(None) == {}
    with pytest.raises(ValueError):
        parse_weights("a=0")
    with pytest.raises(ValueError):
        parse_weights("justaname")
    assert share_cap(0.5, 8) == 4 and share_cap(0.1, 4) == 1 and share_cap(1.0, 3) == 3
