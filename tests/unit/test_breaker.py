"""The circuit breaker's state machine."""

from __future__ import annotations

import pytest

from consumer.core.breaker import BreakerState, CircuitBreaker


def make() -> CircuitBreaker:
    return CircuitBreaker(window=10, failure_rate=0.5, min_calls=4, open_s=10.0, probes=2)


def test_opens_on_failure_rate_after_min_calls() -> None:
    b = make()
    for _ in range(3):
        assert b.allow(0)
        b.record(False, 0)
    assert b.state(0) is BreakerState.CLOSED  # below min_calls
    b.record(False, 0)
    assert b.state(0) is BreakerState.OPEN
    assert not b.allow(1)


def test_successes_keep_it_closed() -> None:
    b = make()
    for i in range(20):
        b.record(i % 4 != 0, 0)  # one failure in four
    assert b.state(0) is BreakerState.CLOSED


def test_half_open_lets_probes_through_and_closes_on_success() -> None:
    b = make()
    for _ in range(4):
        b.record(False, 0)
    assert b.state(9.9) is BreakerState.OPEN
    assert b.state(10.0) is BreakerState.HALF_OPEN
    assert b.allow(10.0) and b.allow(10.0)
    assert not b.allow(10.0)  # only two probes
    b.record(True, 10.1)
    assert b.state(10.1) is BreakerState.HALF_OPEN
    b.record(True, 10.2)
    assert b.state(10.2) is BreakerState.CLOSED
    assert b.allow(10.3)


def test_failed_probe_reopens() -> None:
    b = make()
    for _ in range(4):
        b.record(False, 0)
    assert b.allow(10.0)
    b.record(False, 10.0)
    assert b.state(10.0) is BreakerState.OPEN
    assert b.state(19.9) is BreakerState.OPEN
    assert b.state(20.0) is BreakerState.HALF_OPEN


def test_half_open_without_a_verdict_reopens_after_its_timeout() -> None:
    b = CircuitBreaker(window=4, min_calls=2, open_s=1.0, probes=1, half_open_timeout_s=5.0)
    b.record(False, 0)
    b.record(False, 0)
    assert b.allow(1.0)  # the probe is taken ... and its call never reports back
    assert not b.allow(2.0)
    assert b.state(5.9) is BreakerState.HALF_OPEN
    assert b.state(6.0) is BreakerState.OPEN  # the exit of half-open
    assert b.state(7.0) is BreakerState.HALF_OPEN
    assert b.allow(7.0)  # fresh probes


def test_a_released_probe_can_be_taken_again() -> None:
    b = CircuitBreaker(window=4, min_calls=2, open_s=1.0, probes=1)
    b.record(False, 0)
    b.record(False, 0)
    assert b.can_admit(1.0)
    assert b.allow(1.0)
    assert not b.can_admit(1.0) and not b.allow(1.0)
    b.release(1.1)  # e.g. the request expired during inference: no verdict on the engine
    assert b.can_admit(1.2) and b.allow(1.2)
    b.record(True, 1.3)
    assert b.state(1.3) is BreakerState.CLOSED


def test_can_admit_takes_no_probe() -> None:
    b = CircuitBreaker(window=4, min_calls=2, open_s=1.0, probes=1)
    b.record(False, 0)
    b.record(False, 0)
    assert not b.can_admit(0.5)  # open
    for _ in range(5):
        assert b.can_admit(1.0)
    assert b.allow(1.0)


def test_bad_half_open_timeout_is_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_timeout_s=0)


def test_sick_for_counts_from_leaving_closed_across_failed_half_opens() -> None:
    b = make()
    assert b.sick_for(0) == 0.0
    for _ in range(4):
        b.record(False, 5.0)
    assert b.sick_for(7.0) == 2.0
    assert b.allow(15.0)  # half-open probe
    b.record(False, 15.1)  # fails: open again, the clock keeps running from 5.0
    assert b.state(15.2) is BreakerState.OPEN
    assert b.sick_for(20.0) == 15.0


def test_sick_for_resets_once_the_probes_close_it() -> None:
    b = make()
    for _ in range(4):
        b.record(False, 0.0)
    assert b.allow(10.0) and b.allow(10.0)
    b.record(True, 10.1)
    b.record(True, 10.2)
    assert b.state(10.3) is BreakerState.CLOSED
    assert b.sick_for(50.0) == 0.0
    for _ in range(4):
        b.record(False, 60.0)
    assert b.sick_for(61.0) == 1.0
