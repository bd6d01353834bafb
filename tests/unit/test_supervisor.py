"""Supervision: loops and tasks that fail are logged and make the service unhealthy."""

from __future__ import annotations

import asyncio
import logging

import pytest

from consumer.runtime.supervisor import Supervisor, finish_within


async def _boom() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("kaput")


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_a_loop_that_raises_is_logged_and_unhealthy(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor()
    with caplog.at_level(logging.ERROR):
        task = sup.loop("intake", _boom())
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert not sup.healthy()
    assert any("intake" in r.getMessage() and "kaput" in r.getMessage() for r in caplog.records)


async def test_a_loop_that_returns_while_running_is_a_failure() -> None:
    sup = Supervisor()

    async def quits() -> None:
        return None

    await sup.loop("commit", quits())
    await asyncio.sleep(0)
    assert sup.failures == ["loop commit exited"]


async def test_stopping_cancels_loops_without_failure() -> None:
    sup = Supervisor()
    sup.loop("observe", _forever())
    sup.stopping = True
    await sup.cancel_loops(["observe"])
    assert sup.healthy()


async def test_a_task_that_raises_is_a_failure_but_cancellation_is_not() -> None:
    sup = Supervisor()
    cancelled = sup.task("p0", _forever())
    failing = sup.task("p1", _boom())
    assert set(sup.tasks_of(["p0"])) == {cancelled}
    cut = await finish_within([cancelled], 0.01)
    await asyncio.gather(failing, return_exceptions=True)
    await asyncio.sleep(0)
    assert cut == 1
    assert len(sup.failures) == 1 and "kaput" in sup.failures[0]
    assert sup.all_tasks() == []
