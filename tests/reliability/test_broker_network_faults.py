"""Scenarios 3 and 5: the broker frozen and restarted; the network cut and slowed.

Both run on a broker of their own. It has a second listener advertised at the address of
a fault-injecting TCP proxy, so a consumer bootstrapping through the proxy keeps using it
(the test's own clients use the direct listener and never see the faults).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from consumer.dev.devbroker import DevBroker
from consumer.dev.ports import free_port
from tests.integration.helpers import make_request
from tests.reliability.brokers import dedicated_broker
from tests.reliability.conftest import ScenarioFactory, alo_bound
from tests.reliability.proxy import FaultProxy

DELIVERIES = ["at-least-once", "exactly-once"]
SESSION_TIMEOUT_S = 6.0


@pytest.fixture(scope="module")
def fault_broker() -> Iterator[tuple[DevBroker, int]]:
    """(broker, the port its proxied listener advertises)."""
    advertised = free_port()
    with dedicated_broker("faults", proxied=(free_port(), advertised)) as broker:
        yield broker, advertised


@pytest.fixture
async def proxy(fault_broker: tuple[DevBroker, int]) -> AsyncIterator[FaultProxy]:
    broker, advertised = fault_broker
    assert broker.proxied is not None
    fp = FaultProxy(target_port=broker.proxied[0], listen_port=advertised)
    await fp.start()
    yield fp
    await fp.stop()


async def _next_answer(sc, timeout_s: float = 120) -> float:
    """Seconds until one more request is answered than now."""
    n = await sc.history.count_answered()
    return await sc.history.wait_count(n + 1, timeout_s=timeout_s)


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_broker_frozen_past_the_session_timeout_then_restarted(
    scenario: ScenarioFactory, fault_broker: tuple[DevBroker, int], delivery: str
) -> None:
    broker, _ = fault_broker
    sc = await scenario(
        "3 broker SIGSTOP 10 s; broker SIGKILL + restart",
        delivery,
        bootstrap=broker.bootstrap,
        fake_latency_ms=50,
    )
    await sc.load(300)
    proc = sc.consumer("steady")
    await sc.history.wait_count(40)

    # Marked just before: the broker is the fault, so nothing can be read (or committed)
    # while it is frozen or down.
    await sc.history.mark_fault(sc.settings.kafka_group_id)
    broker.freeze()
    await asyncio.sleep(SESSION_TIMEOUT_S + 4)  # the fault itself: frozen past the timeout
    broker.thaw()
    after_thaw = await _next_answer(sc)
    assert proc.alive(), proc.log()[-3000:]

    # Restart under load: requests are being produced while the broker dies, so the
    # producer's retries meet a restarted broker (idempotence must keep them single).
    more = [make_request(1000 + i) for i in range(300)]
    producing = asyncio.create_task(sc.history.produce_requests(sc.topic, more, pace_s=0.2))
    await sc.history.wait_log_size(sc.topic, 300 + 100)
    await sc.history.mark_fault(sc.settings.kafka_group_id)
    broker.kill_node(0)
    down_at = time.monotonic()
    await asyncio.to_thread(broker.restart_node, 0)
    restart_s = time.monotonic() - down_at
    await producing
    after_restart = await _next_answer(sc)
    await sc.history.wait_answered(timeout_s=180)
    assert proc.alive(), proc.log()[-3000:]
    copies = await sc.history.input_copies()
    assert copies == 0, f"{copies} requests stored twice: producer retries duplicated"
    bound = 0 if delivery == "exactly-once" else alo_bound(sc.settings)
    await sc.finish(
        bound,
        f"same process throughout: answering {after_thaw:.1f} s after the thaw and "
        f"{after_restart:.1f} s after the broker was back ({restart_s:.0f} s down); "
        f"{copies} duplicate inputs from producer retries",
        after_thaw_s=round(after_thaw, 1),
        after_restart_s=round(after_restart, 1),
        broker_down_s=round(restart_s, 1),
        input_copies=copies,
    )


async def _answers_again(sc, consumer_id: str, since: datetime, timeout_s: float = 90) -> float:
    """Seconds from ``since`` to the first result ``consumer_id`` completed after it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        back = [
            r.completed_at
            for r in await sc.history.outputs()
            if r.consumer_id == consumer_id and r.completed_at > since
        ]
        if back:
            return (min(back) - since).total_seconds()
        await asyncio.sleep(0.3)
    raise AssertionError(f"{consumer_id} never answered again within {timeout_s:.0f}s")


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_network_cut_past_the_session_timeout_then_latency(
    scenario: ScenarioFactory,
    fault_broker: tuple[DevBroker, int],
    proxy: FaultProxy,
    delivery: str,
) -> None:
    broker, advertised = fault_broker
    sc = await scenario(
        "5 network cut 12 s (peer takes over); +200 ms latency",
        delivery,
        bootstrap=broker.bootstrap,
        consumer_bootstrap=f"127.0.0.1:{advertised}",
        fake_latency_ms=50,
    )
    await sc.load(600)
    cut_off = sc.consumer("behind-proxy")
    await sc.history.wait_count(40)
    assert proxy.connections > 0, "the consumer did not go through the proxy"

    proxy.cut()
    cut_at = time.monotonic()
    # Marked after the cut (the member behind it cannot commit any more) and long before
    # its session expires (no peer owns its partitions yet).
    await sc.history.mark_fault(sc.settings.kafka_group_id)
    # A peer on the direct listener takes the partitions once the cut-off member expires.
    peer = sc.consumer("peer", KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
    took_over = await _next_answer(sc)
    await asyncio.sleep(max(0.0, SESSION_TIMEOUT_S * 2 - (time.monotonic() - cut_at)))
    proxy.restore()
    restored = datetime.now(UTC)
    # The cut-off member comes back as a zombie: it must rejoin, not publish stale work.
    # Fresh work keeps arriving, so that it has something to answer once it is back.
    more = [make_request(2000 + i) for i in range(600)]
    producing = asyncio.create_task(sc.history.produce_requests(sc.topic, more, pace_s=0.2))
    rejoined = await _answers_again(sc, "behind-proxy", restored)
    proxy.latency_s = 0.2
    n = await sc.history.count_answered()
    await sc.history.wait_count(n + 60, timeout_s=180)
    proxy.latency_s = 0.0
    await producing
    await sc.history.wait_answered(timeout_s=180)
    assert cut_off.alive(), cut_off.log()[-3000:]
    assert peer.alive(), peer.log()[-3000:]
    bound = 0 if delivery == "exactly-once" else alo_bound(sc.settings)
    fenced = cut_off.log().count("its producer was fenced")
    if delivery == "exactly-once":
        # 0 duplicates would also hold if the zombie never tried to write: it did, and the
        # broker fenced it (the peer's init_transactions had bumped the epoch).
        assert fenced >= 1, cut_off.log()[-3000:]
    fence = f"; the zombie fenced on {fenced} partitions" if delivery == "exactly-once" else ""
    await sc.finish(
        bound,
        f"peer answering {took_over:.0f} s into the cut; the cut-off member answering again "
        f"{rejoined:.1f} s after the network came back, then under +200 ms each way{fence}",
        fenced=fenced,
        peer_took_over_s=round(took_over, 1),
        cut_off_member_back_s=round(rejoined, 1),
    )
