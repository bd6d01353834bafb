"""Supervision: every loop and request task gets a done-callback that logs and escalates.

A loop that ends while the service runs, or any task that raises, is a failure: it is logged
with its traceback and makes :meth:`Supervisor.healthy` False, which turns GET /health into
503 so the orchestrator restarts the pod (uncommitted work is then redone by the next owner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Hashable, Iterable
from typing import Any

__all__ = ["Supervisor"]

log = logging.getLogger("explainstream.supervisor")


class Supervisor:
    """Spawns and watches the service's loops and per-partition tasks."""

    def __init__(self) -> None:
        self.loops: dict[str, asyncio.Task[None]] = {}
        self._tasks: dict[Hashable, set[asyncio.Task[None]]] = {}
        self.failures: list[str] = []
        self.stopping = False

    def loop(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a loop that must run until the service stops."""
        task = asyncio.create_task(coro, name=name)
        self.loops[name] = task
        task.add_done_callback(self._loop_done)
        return task

    def task(self, key: Hashable, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a task owned by ``key`` (a partition); it may end, but must not raise."""
        task = asyncio.create_task(coro)
        tasks = self._tasks.setdefault(key, set())
        tasks.add(task)
        task.add_done_callback(self._task_done)
        task.add_done_callback(tasks.discard)
        return task

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if not self.stopping:
                self._fail(f"loop {task.get_name()} was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self._fail(f"loop {task.get_name()} died: {exc!r}", exc)
        elif not self.stopping:
            self._fail(f"loop {task.get_name()} exited")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(f"task {task.get_name()} died: {exc!r}", exc)

    def _fail(self, what: str, exc: BaseException | None = None) -> None:
        self.failures.append(what)
        log.error("%s", what, exc_info=exc)

    def healthy(self) -> bool:
        """No failure so far."""
        return not self.failures

    def tasks_of(self, keys: Iterable[Hashable]) -> list[asyncio.Task[None]]:
        """Running tasks of the given keys."""
        return [t for k in keys for t in self._tasks.get(k, ())]

    def all_tasks(self) -> list[asyncio.Task[None]]:
        """Every running task."""
        return [t for ts in self._tasks.values() for t in ts]

    async def cancel_loops(self, names: Iterable[str]) -> None:
        """Cancel the named loops and wait for them."""
        tasks = [self.loops[n] for n in names if n in self.loops]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def finish_within(tasks: list[asyncio.Task[None]], timeout_s: float) -> int:
    """Wait up to ``timeout_s`` for ``tasks``, then cancel the rest; returns how many were cut."""
    if not tasks:
        return 0
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    return len(late)
