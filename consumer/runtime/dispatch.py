"""The dispatcher: moves the scheduler's pick into the engine while :func:`may_dispatch` allows.

The scheduler (tiers + aging) is the one owner of priority: the effective priority at pick
time is what the engine receives as ``GenerationRequest.priority``. An urgent head may go to
a full engine (up to ``overcommit`` extra requests); a batching engine then preempts its
least urgent running sequence instead of making the urgent request wait for a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from consumer.config import TIERS
from consumer.core.flow import may_dispatch
from consumer.core.scheduler import Buffered, TierScheduler
from consumer.kafka.intake import Work
from consumer.runtime.runner import RequestRunner

__all__ = ["Dispatcher"]

log = logging.getLogger("explainstream.dispatch")


class Dispatcher:
    """Fills engine slots from the scheduler; counts what is in flight per tier."""

    def __init__(
        self,
        *,
        scheduler: TierScheduler[Work],
        runner: RequestRunner,
        slots: Callable[[], int],
        admitting: Callable[[float], bool],
        spawn: Callable[[Hashable, Coroutine[Any, Any, None]], object],
        wake: asyncio.Event,
        overcommit: int,
        on_dispatch: Callable[[int], None] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._runner = runner
        self._slots = slots
        self._admitting = admitting
        self._spawn = spawn
        self._wake = wake
        self._overcommit = overcommit
        self._on_dispatch = on_dispatch
        self.in_flight: dict[str, int] = dict.fromkeys(TIERS, 0)
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = False

    @property
    def busy(self) -> int:
        """Requests between dispatch and the end of their engine attempt."""
        return sum(self.in_flight.values())

    async def run(self) -> None:
        """Dispatch on every wake-up (and at least every 250 ms) until stopped."""
        while not self.stopping:
            self.dispatch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.25)
            self._wake.clear()

    def dispatch(self) -> int:
        """One pass: decide per head with :func:`may_dispatch`, then start it. Returns count."""
        started = 0
        slots = self._slots()
        while True:
            now = time.monotonic()
            head = self._scheduler.peek(now)
            priority = None if head is None else self._scheduler.effective_priority(head, now)
            if not may_dispatch(
                busy=self.busy,
                slots=slots,
                head_priority=priority,
                overcommit=self._overcommit,
                admitting=self._admitting(now),
            ):
                break
            entry = self._scheduler.pick(now)
            assert entry is not None and priority is not None
            self._start(entry, priority)
            started += 1
        if started and self._on_dispatch is not None:
            self._on_dispatch(self.busy)
        return started

    def _start(self, entry: Buffered[Work], priority: int) -> None:
        tier = entry.item.tier
        self.in_flight[tier] += 1
        self.idle.clear()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.in_flight[tier] -= 1
            self._scheduler.done(entry)
            if not self.busy:
                self.idle.set()
            self._wake.set()

        async def run() -> None:
            try:
                await self._runner.run(entry, priority, release)
            finally:
                release()

        self._spawn(entry.item.tp, run())
