"""The sick exit: a member whose breaker never closes gives its partitions up.

An open breaker pauses the member's partitions; they stay assigned to it, and readiness only
affects the Service, so nothing moves them to a healthy member. An engine that fails every
call (or hangs: each request then times out and counts as a failure) keeps the breaker away
from closed; once that has lasted ``BREAKER_MAX_OPEN_S`` the service fails liveness, leaves
the group (drain, final commit, close) and exits with status 3, so the orchestrator
restarts it while the group rebalances the partitions onto the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from consumer.core.breaker import CircuitBreaker

__all__ = ["SICK_EXIT_STATUS", "wait_sick"]

SICK_EXIT_STATUS = 3
"""Exit status of ``explainstream consume`` after a sick exit."""


async def wait_sick(breaker: CircuitBreaker, bound_s: float, stopping: Callable[[], bool]) -> str:
    """Return the reason once ``breaker`` stayed away from closed for ``bound_s`` seconds
    (never while ``stopping()``; never at all when ``bound_s`` is 0)."""
    if bound_s <= 0:
        await asyncio.Event().wait()
    period = min(1.0, bound_s / 4)
    while True:
        await asyncio.sleep(period)
        sick_s = breaker.sick_for(time.monotonic())
        if sick_s >= bound_s and not stopping():
            return f"circuit breaker not closed for {sick_s:.0f}s (BREAKER_MAX_OPEN_S={bound_s:g})"
