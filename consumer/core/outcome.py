"""What one engine attempt means: pure decision of the request runner.

The runner classifies how an attempt ended (:class:`Attempt`) and :func:`decide` says what
to do: publish a result with a status, or requeue after a backoff; and what the breaker
hears (success, failure, or nothing — a probe that ended without a verdict is released).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Attempt", "BreakerNote", "Outcome", "decide", "retry_backoff_s"]


class Attempt(StrEnum):
    """How an engine attempt ended."""

    OK = "ok"
    DEADLINE = "deadline"  # the request's deadline passed during inference
    REJECTED = "rejected"  # the engine refused the request (limits, unknown profile)
    FAILED = "failed"  # engine error or REQUEST_TIMEOUT


class BreakerNote(StrEnum):
    """What the breaker records for the attempt."""

    SUCCESS = "success"
    FAILURE = "failure"
    RELEASE = "release"  # no verdict on engine health: give the probe back


@dataclass(frozen=True, slots=True)
class Outcome:
    """``status`` None means requeue after ``backoff_s``."""

    status: str | None
    error: str | None
    breaker: BreakerNote
    backoff_s: float = 0.0


def retry_backoff_s(attempts: int, backoff_ms: float) -> float:
    """Exponential backoff before attempt ``attempts + 1``, capped at 30 s."""
    return min(30.0, backoff_ms / 1000.0 * (2 ** max(0, attempts - 1)))


def decide(
    attempt: Attempt,
    *,
    error: str | None,
    retriable: bool,
    attempts: int,
    retry_attempts: int,
    stopping: bool,
    backoff_ms: float,
) -> Outcome:
    """Map one attempt to a result status or a requeue (see module docstring)."""
    if attempt is Attempt.OK:
        return Outcome("OK", None, BreakerNote.SUCCESS)
    if attempt is Attempt.DEADLINE:
        return Outcome("EXPIRED", error or "deadline passed during inference", BreakerNote.RELEASE)
    if attempt is Attempt.REJECTED:
        return Outcome("REJECTED", error, BreakerNote.RELEASE)
    if retriable and attempts < retry_attempts and not stopping:
        return Outcome(None, error, BreakerNote.FAILURE, retry_backoff_s(attempts, backoff_ms))
    return Outcome("FAILED", f"failed after {attempts} attempt(s): {error}", BreakerNote.FAILURE)
