"""/ready and /health on the real service's rules (``consumer/runtime/status.py``), served
by the real HTTP server: no partitions, a reload, stopping, the breaker, a dead loop, a
dead engine and a partition lost for longer than two session timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from consumer.config import Settings
from consumer.ops.http import HttpServer
from consumer.runtime.service import ConsumerService

TP = ("explain.requests.normal", 0)


@pytest.fixture
async def probed() -> AsyncIterator[tuple[ConsumerService, str]]:
    """A service that owns one ready partition and has its engine loaded (no Kafka: its
    state is set the way the rebalance callbacks and start() set it), behind HTTP."""
    svc = ConsumerService(
        Settings.from_env({}, engine="fake", prometheus_enabled=False, breaker_min_calls=2)
    )
    svc._engine_ready = True
    now = time.monotonic()
    svc.book.assigning([TP], {TP: 2}, now)
    svc.book.ready([TP], now)
    loop = svc.supervisor.loop("intake", asyncio.Event().wait())
    server = HttpServer(svc, admin_token=None)
    port = await server.start("127.0.0.1", 0)
    try:
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        svc.supervisor.stopping = True
        loop.cancel()
        await server.stop()


async def _status(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_ready_when_loaded_owning_a_partition_and_the_breaker_closed(
    probed: tuple[ConsumerService, str],
) -> None:
    _, base = probed
    status, body = await _status(f"{base}/ready")
    assert status == 200, body
    assert body["partitions_assigned"] == 1
    assert (await _status(f"{base}/health"))[0] == 200


async def test_not_ready_without_a_ready_partition(probed: tuple[ConsumerService, str]) -> None:
    svc, base = probed
    svc.book.revoking([TP], time.monotonic())
    status, body = await _status(f"{base}/ready")
    assert (status, body["partitions_assigned"]) == (503, 0)


async def test_not_ready_while_reloading(probed: tuple[ConsumerService, str]) -> None:
    svc, base = probed
    async with svc._reloading:
        status, body = await _status(f"{base}/ready")
        assert (status, body["model_loaded"]) == (503, False)
    assert (await _status(f"{base}/ready"))[0] == 200


async def test_not_ready_while_stopping_and_still_live(probed: tuple[ConsumerService, str]) -> None:
    svc, base = probed
    svc._stopping = True
    status, body = await _status(f"{base}/ready")
    assert (status, body["stopping"]) == (503, True)
    assert (await _status(f"{base}/health"))[0] == 200  # a drain is not a failure


async def test_not_ready_while_the_breaker_is_open(probed: tuple[ConsumerService, str]) -> None:
    svc, base = probed
    now = time.monotonic()
    for _ in range(svc.settings.breaker_window):
        svc.breaker.record(False, now)
    status, body = await _status(f"{base}/ready")
    assert (status, body["breaker_state"]) == (503, "open")


async def test_not_live_once_a_loop_died(probed: tuple[ConsumerService, str]) -> None:
    svc, base = probed
    task = svc.supervisor.loops["intake"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for _ in range(10):  # its done-callback runs in one of the next loop iterations
        if svc.supervisor.failures:
            break
        await asyncio.sleep(0)
    assert svc.supervisor.failures == ["loop intake was cancelled"]
    assert (await _status(f"{base}/health"))[0] == 503


async def test_not_live_when_the_engine_died(
    probed: tuple[ConsumerService, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, base = probed
    monkeypatch.setattr(svc.engine, "alive", lambda: False, raising=False)
    assert (await _status(f"{base}/health"))[0] == 503


async def test_not_live_when_a_partition_stays_lost(probed: tuple[ConsumerService, str]) -> None:
    svc, base = probed
    grace = 2 * svc.settings.kafka_session_timeout_ms / 1000.0
    svc.book.lost(TP, time.monotonic())
    assert (await _status(f"{base}/health"))[0] == 200  # the group may still move it
    svc.book.lost(TP, time.monotonic() - grace - 1)
    assert (await _status(f"{base}/health"))[0] == 503
