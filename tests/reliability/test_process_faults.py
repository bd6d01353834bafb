"""Scenarios 1 and 2: the consumer process killed, terminated, joined and left mid-run."""

from __future__ import annotations

import time

import pytest

from tests.reliability.conftest import ScenarioFactory, alo_bound

DELIVERIES = ["at-least-once", "exactly-once"]


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_sigkill_mid_batch_three_times_in_a_row(
    scenario: ScenarioFactory, delivery: str
) -> None:
    sc = await scenario("1 SIGKILL mid-batch x3, restarts", delivery, fake_latency_ms=50)
    await sc.load(600)
    kills = 3
    resumed: list[float] = []
    answered = 0
    for k in range(kills):
        proc = sc.consumer(f"victim{k}")
        started = time.monotonic()
        # Killed only once it has made progress of its own: mid-batch, with work in flight.
        await sc.history.wait_count(answered + 1, timeout_s=120)
        resumed.append(time.monotonic() - started)
        await sc.history.wait_count(answered + 60, timeout_s=120)
        await proc.kill()
        await sc.history.mark_fault(sc.settings.kafka_group_id)
        answered = await sc.history.count_answered()
        assert answered < 600, "the work ended before the fault: the test proves nothing"
    last = sc.consumer("survivor")
    started = time.monotonic()
    await sc.history.wait_count(answered + 1, timeout_s=120)
    resumed.append(time.monotonic() - started)
    await sc.history.wait_answered(timeout_s=180)
    assert last.alive()
    bound = 0 if delivery == "exactly-once" else alo_bound(sc.settings)
    await sc.finish(
        bound,
        f"killed 3x; each restart answered again within {max(resumed):.0f} s (session timeout 6 s)",
        resume_s=[round(s, 1) for s in resumed],
    )


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_sigterm_and_a_member_joining_then_leaving(
    scenario: ScenarioFactory, delivery: str
) -> None:
    sc = await scenario("2 SIGTERM; 2nd member joins, leaves", delivery, fake_latency_ms=50)
    await sc.load(1200)
    first = sc.consumer("first")
    await sc.history.wait_count(60)
    second = sc.consumer("second")
    await second.wait_ready()
    n = await sc.history.count_answered()
    await sc.history.wait_count(n + 100)
    t0 = time.monotonic()
    assert await second.terminate() == 0, second.log()[-3000:]
    leave_s = time.monotonic() - t0
    n = await sc.history.count_answered()
    await sc.history.wait_count(n + 50)
    t0 = time.monotonic()
    assert await first.terminate() == 0, first.log()[-3000:]
    term_s = time.monotonic() - t0
    n = await sc.history.count_answered()
    assert n < 1200, "the work ended before SIGTERM: the test proves nothing"
    sc.consumer("third")
    await sc.history.wait_answered(timeout_s=180)
    consumers = {r.consumer_id for r in await sc.history.outputs()}
    assert {"first", "second", "third"} <= consumers
    await sc.finish(
        0,
        lambda v: (
            f"SIGTERM: drained and exited 0 in {term_s:.1f} s; a member left in "
            f"{leave_s:.1f} s; {v.duplicates} repeated"
        ),
        sigterm_exit_s=round(term_s, 1),
        leave_s=round(leave_s, 1),
    )
