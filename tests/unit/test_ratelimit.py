"""Token buckets per client: what passes, what is refused, and the wait it names."""

from __future__ import annotations

from consumer.core.ratelimit import ClientBuckets


def test_a_burst_passes_then_the_rate_refills() -> None:
    b = ClientBuckets(rate=2.0, burst=3)
    assert [b.take("a", 1, now=0.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = b.take("a", 1, now=0.0)
    assert refused.retry_after_s == 0.5 and refused.retry_after_header == "1"
    assert b.take("a", 1, now=0.5).allowed
    assert not b.take("a", 1, now=0.5).allowed


def test_clients_have_buckets_of_their_own() -> None:
    b = ClientBuckets(rate=1.0, burst=1)
    assert b.take("a", 1, now=0.0).allowed
    assert not b.take("a", 1, now=0.0).allowed
    assert b.take("b", 1, now=0.0).allowed


def test_a_batch_costs_one_token_per_request() -> None:
    b = ClientBuckets(rate=1.0, burst=10)
    assert b.take("a", 8, now=0.0).allowed
    refused = b.take("a", 5, now=0.0)
    assert not refused.allowed and refused.retry_after_s == 3.0
    assert b.take("a", 2, now=0.0).allowed


def test_the_number_of_remembered_clients_is_bounded() -> None:
    b = ClientBuckets(rate=1.0, burst=1, max_clients=2)
    for client in ("a", "b", "c"):
        b.take(client, 1, now=0.0)
    assert len(b) == 2
    assert b.take("a", 1, now=0.0).allowed  # forgotten: a full bucket again
