"""The gateway's rate limit on a real HTTP server: 429 with Retry-After, per client, counted.

The client factory never reaches Kafka (it fails fast), so a request under the limit is
answered 503 and one over it 429: the limit is decided before anything touches Kafka.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from consumer.edge.gateway import create_app
from consumer.edge.limits import GatewayLimiter
from schemas.errors import ConfigError, KafkaUnavailable

BODY = {"context": {"analysis_type": "sentiment", "symbol": "AAPL", "sentiment_score": 0.7}}


class _NoKafka:
    listening = False

    async def start(self) -> None:
        raise KafkaUnavailable("no broker in this test")

    async def close(self) -> None:
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def gateway(limiter: GatewayLimiter) -> AsyncIterator[aiohttp.ClientSession]:
    app = create_app(lambda: _NoKafka(), limiter=limiter)  # type: ignore[arg-type,return-value]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession(base_url=f"http://{host}:{port}") as session:
            yield session
    finally:
        await runner.cleanup()


async def _status(http: aiohttp.ClientSession, path: str, body: Any, **headers: str) -> int:
    async with http.post(path, json=body, headers=headers) as resp:
        return resp.status


async def test_over_the_limit_is_429_with_retry_after_and_counted() -> None:
    clock = _Clock()
    limiter = GatewayLimiter(0.5, 2, registry=CollectorRegistry(), clock=clock)
    async with gateway(limiter) as http:
        assert [await _status(http, "/explain", BODY) for _ in range(2)] == [503, 503]
        async with http.post("/explain", json=BODY) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
            assert "GATEWAY_RATE_LIMIT" in (await resp.json())["detail"]
        clock.now += 2.0
        assert await _status(http, "/explain", BODY) == 503
        async with http.get("/metrics") as resp:
            text = await resp.text()
    assert 'explainstream_gateway_rate_limited_total{route="/explain"} 1.0' in text


async def test_a_batch_is_charged_per_request() -> None:
    limiter = GatewayLimiter(1.0, 3, registry=CollectorRegistry(), clock=_Clock())
    async with gateway(limiter) as http:
        assert await _status(http, "/explain/batch", {"requests": [BODY] * 4}) == 429
        assert await _status(http, "/explain/batch", {"requests": [BODY] * 3}) == 503
        assert await _status(http, "/explain", BODY) == 429


async def test_clients_are_told_apart_by_the_api_key_header() -> None:
    limiter = GatewayLimiter(
        1.0, 1, key_header="X-API-Key", registry=CollectorRegistry(), clock=_Clock()
    )
    async with gateway(limiter) as http:
        assert await _status(http, "/explain", BODY, **{"X-API-Key": "alpha"}) == 503
        assert await _status(http, "/explain", BODY, **{"X-API-Key": "alpha"}) == 429
        assert await _status(http, "/explain", BODY, **{"X-API-Key": "beta"}) == 503
        # Without the header the peer address is the client: a bucket of its own.
        assert await _status(http, "/explain", BODY) == 503
        assert await _status(http, "/explain", BODY) == 429


async def test_no_limit_configured_never_answers_429() -> None:
    async with gateway(GatewayLimiter(None, registry=CollectorRegistry())) as http:
        assert {await _status(http, "/explain", BODY) for _ in range(20)} == {503}


def test_the_limit_comes_from_the_environment_and_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_RATE_LIMIT", "5")
    monkeypatch.setenv("GATEWAY_API_KEY_HEADER", "X-API-Key")
    limiter = GatewayLimiter.from_env()
    assert limiter.buckets is not None
    assert (limiter.buckets.rate, limiter.buckets.burst) == (5.0, 32.0)
    assert limiter.key_header == "X-API-Key"
    monkeypatch.setenv("GATEWAY_RATE_LIMIT", "-1")
    with pytest.raises(ConfigError, match="GATEWAY_RATE_LIMIT"):
        GatewayLimiter.from_env()
