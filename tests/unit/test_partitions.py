"""The partition book: assignment, readiness, revocation, loss, decode waits."""

from __future__ import annotations

from consumer.core.partitions import PartitionBook, PartitionState


def test_records_are_taken_only_from_ready_partitions() -> None:
    book = PartitionBook()
    book.assigning(["a", "b"], {"a": 0, "b": 3}, now=0.0)
    assert not book.accepts("a", 0.0) and book.held(0.0) == {"a", "b"}
    book.ready(["a"], now=1.0)
    assert book.accepts("a", 1.0) and book.held(1.0) == {"b"}
    book.revoking(["a"], now=2.0)
    assert not book.accepts("a", 2.0)
    assert book.committable() == {"a"}
    book.remove(["a"])
    assert "a" not in book and book.tiers() == {"b": 3}


def test_decode_wait_backs_off_and_clears() -> None:
    book = PartitionBook()
    book.assigning(["a"], {"a": 0}, now=0.0)
    book.ready(["a"], now=0.0)
    assert book.wait("a", 10.0, lambda n: float(n)) == (1, 1.0)
    assert not book.accepts("a", 10.5) and book.accepts("a", 11.0)
    assert book.wait("a", 11.0, lambda n: float(n)) == (2, 2.0)
    book.clear_wait("a")
    assert book.accepts("a", 11.0)
    assert book.wait("a", 12.0, lambda n: float(n)) == (1, 1.0)
    assert book.wait("unknown", 0.0, lambda n: 1.0) == (0, 0.0)


def test_lost_partitions_are_held_not_committed_and_age() -> None:
    book = PartitionBook()
    book.assigning(["a"], {"a": 0}, now=0.0)
    book.ready(["a"], now=0.0)
    book.lost("a", now=5.0)
    assert book.state("a") is PartitionState.LOST
    assert book.committable() == set() and book.held(6.0) == {"a"}
    assert book.lost_longer_than(10.0, now=14.0) == set()
    assert book.lost_longer_than(10.0, now=15.5) == {"a"}
    book.ready(["a"], now=16.0)  # only a fresh assignment makes it ready again
    assert book.state("a") is PartitionState.LOST
