"""The offset tracker commits only the contiguous completed prefix."""

from __future__ import annotations

import pytest

from consumer.core.offsets import OffsetTracker

TP = ("requests.low", 0)


def test_out_of_order_completion_commits_only_the_prefix() -> None:
    t = OffsetTracker()
    for off in (10, 11, 12, 13):
        t.started(TP, off)
    t.done(TP, 12)
    t.done(TP, 11)
    assert t.commit_position(TP) == 10
    t.done(TP, 10)
    assert t.commit_position(TP) == 13
    t.done(TP, 13)
    assert t.commit_position(TP) == 14
    assert t.outstanding(TP) == 0


def test_to_commit_reports_only_advances() -> None:
    t = OffsetTracker()
    t.started(TP, 0)
    t.done(TP, 0)
    first = t.to_commit()
    assert first == {TP: 1}
    t.committed(first)
    assert t.to_commit() == {}
    t.fetched_up_to(TP, 3)  # control records skipped by the fetcher
    assert t.to_commit() == {TP: 3}


def test_gaps_in_offsets_are_fine() -> None:
    t = OffsetTracker()
    t.started(TP, 5)
    t.started(TP, 9)
    t.done(TP, 9)
    assert t.commit_position(TP) == 5
    t.done(TP, 5)
    assert t.commit_position(TP) == 10


def test_offsets_must_increase() -> None:
    t = OffsetTracker()
    t.started(TP, 3)
    with pytest.raises(ValueError):
        t.started(TP, 3)


def test_forgotten_partitions_ignore_late_completions() -> None:
    t = OffsetTracker()
    t.started(TP, 1)
    t.forget([TP])
    t.done(TP, 1)
    assert t.commit_position(TP) is None
    assert t.to_commit() == {}


def test_committed_never_moves_back() -> None:
    t = OffsetTracker()
    for off in range(5):
        t.started(TP, off)
        t.done(TP, off)
    t.committed({TP: 5})
    t.committed({TP: 3})  # a late report of an older commit
    assert t.to_commit() == {}
    t.started(TP, 5)
    t.done(TP, 5)
    assert t.to_commit() == {TP: 6}


def test_uncommitted_counts_everything_taken_until_it_is_committed() -> None:
    t = OffsetTracker()
    for off in range(6):
        t.started(TP, off)
    assert t.uncommitted(TP) == 6
    for off in (1, 2, 4):
        t.done(TP, off)  # held behind offset 0
    assert t.uncommitted(TP) == 6
    t.done(TP, 0)  # prefix 0..2 done, not yet committed
    assert t.uncommitted(TP) == 6
    t.committed({TP: 3})
    assert t.uncommitted(TP) == 3  # 3 and 5 running, 4 done behind 3
    t.done(TP, 3)
    t.done(TP, 5)
    t.committed({TP: 6})
    assert t.uncommitted(TP) == 0
    assert t.uncommitted(("other", 0)) == 0
