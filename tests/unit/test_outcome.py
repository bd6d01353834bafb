"""The runner's outcome decision for one engine attempt."""

from __future__ import annotations

from consumer.core.outcome import Attempt, BreakerNote, decide, retry_backoff_s


def run(attempt: Attempt, **kw: object) -> tuple[str | None, BreakerNote, float]:
    values: dict[str, object] = {
        "error": "boom",
        "retriable": True,
        "attempts": 1,
        "retry_attempts": 3,
        "stopping": False,
        "backoff_ms": 100.0,
    }
    values.update(kw)
    out = decide(attempt, **values)  # type: ignore[arg-type]
    return out.status, out.breaker, out.backoff_s


def test_success_closes_the_loop() -> None:
    assert run(Attempt.OK) == ("OK", BreakerNote.SUCCESS, 0.0)


def test_deadline_and_rejection_answer_without_judging_the_engine() -> None:
    assert run(Attempt.DEADLINE)[:2] == ("EXPIRED", BreakerNote.RELEASE)
    assert run(Attempt.REJECTED)[:2] == ("REJECTED", BreakerNote.RELEASE)


def test_retriable_failure_requeues_with_backoff_within_budget() -> None:
    assert run(Attempt.FAILED, attempts=1) == (None, BreakerNote.FAILURE, 0.1)
    assert run(Attempt.FAILED, attempts=2) == (None, BreakerNote.FAILURE, 0.2)
    assert run(Attempt.FAILED, attempts=3)[:2] == ("FAILED", BreakerNote.FAILURE)


def test_no_retry_when_not_retriable_or_stopping() -> None:
    assert run(Attempt.FAILED, retriable=False)[0] == "FAILED"
    assert run(Attempt.FAILED, stopping=True)[0] == "FAILED"


def test_failed_error_names_the_attempts() -> None:
    out = decide(
        Attempt.FAILED,
        error="GPU gone",
        retriable=False,
        attempts=2,
        retry_attempts=3,
        stopping=False,
        backoff_ms=1,
    )
    assert out.error == "failed after 2 attempt(s): GPU gone"


def test_backoff_is_capped() -> None:
    assert retry_backoff_s(40, 1000.0) == 30.0
