"""Circuit breaker around the engine: pure state machine, time passed in.

closed → open when, over the last ``window`` calls (at least ``min_calls``), the failure
rate reaches ``failure_rate``; open → half-open after ``open_s``; half-open lets ``probes``
calls through: all succeed → closed, any fails → open again. While open the service pauses
intake instead of failing requests.

Only calls that really reach the engine take a probe (:meth:`CircuitBreaker.allow`) and
every probe taken is given back by :meth:`record` or :meth:`release`. Should one still go
missing, half-open has its own exit: after ``half_open_timeout_s`` without a verdict the
breaker opens again, and the next half-open starts with fresh probes.

:meth:`CircuitBreaker.sick_for` tells how long the breaker has been away from closed
(open and half-open cycles without a recovery): the service leaves the group past a bound.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Breaker states as exported in metrics and /status."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass
class CircuitBreaker:
    """See module docstring."""

    window: int = 20
    failure_rate: float = 0.5
    min_calls: int = 5
    open_s: float = 30.0
    probes: int = 2
    half_open_timeout_s: float = 60.0
    _state: BreakerState = field(init=False, default=BreakerState.CLOSED)
    _outcomes: deque[bool] = field(init=False)
    _opened_at: float = field(init=False, default=0.0)
    _half_opened_at: float = field(init=False, default=0.0)
    _probes_out: int = field(init=False, default=0)
    _probes_ok: int = field(init=False, default=0)
    _left_closed_at: float | None = field(init=False, default=None)
    transitions: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if (
            not (0 < self.failure_rate <= 1)
            or self.window < 1
            or self.probes < 1
            or self.half_open_timeout_s <= 0
        ):
            raise ValueError("invalid breaker parameters")
        self._outcomes = deque(maxlen=self.window)

    def state(self, now: float) -> BreakerState:
        """Current state, moving open → half-open after ``open_s`` and a stuck half-open
        back to open after ``half_open_timeout_s``."""
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.open_s:
            self._to(BreakerState.HALF_OPEN)
            self._half_opened_at = now
            self._probes_out = self._probes_ok = 0
        elif (
            self._state is BreakerState.HALF_OPEN
            and now - self._half_opened_at >= self.half_open_timeout_s
        ):
            self._open(now)
        return self._state

    def allow(self, now: float) -> bool:
        """May one more engine call start now? Takes a probe when half-open.

        A caller that gets True must later call :meth:`record` or :meth:`release`.
        """
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_out + self._probes_ok < self.probes:
            self._probes_out += 1
            return True
        return False

    def can_admit(self, now: float) -> bool:
        """Would :meth:`allow` say yes now? Takes nothing."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._probes_out + self._probes_ok < self.probes

    def sick_for(self, now: float) -> float:
        """Seconds since the breaker last left closed without closing again; 0 when closed."""
        if self.state(now) is BreakerState.CLOSED or self._left_closed_at is None:
            return 0.0
        return max(0.0, now - self._left_closed_at)

    def release(self, now: float) -> None:
        """Give back a probe whose call ended without a verdict (cancelled, not run)."""
        if self.state(now) is BreakerState.HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1

    def record(self, ok: bool, now: float) -> None:
        """Outcome of a call that :meth:`allow` let through."""
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)
            if not ok:
                self._open(now)
                return
            self._probes_ok += 1
            if self._probes_ok >= self.probes:
                self._outcomes.clear()
                self._left_closed_at = None
                self._to(BreakerState.CLOSED)
            return
        if state is BreakerState.OPEN:
            return  # late result of a call started before opening
        self._outcomes.append(ok)
        failures = sum(1 for o in self._outcomes if not o)
        if (
            len(self._outcomes) >= self.min_calls
            and failures / len(self._outcomes) >= self.failure_rate
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        if self._state is BreakerState.CLOSED:
            self._left_closed_at = now
        self._opened_at = now
        self._outcomes.clear()
        self._probes_out = self._probes_ok = 0
        self._to(BreakerState.OPEN)

    def _to(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            self.transitions += 1
