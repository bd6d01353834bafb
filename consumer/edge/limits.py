"""The gateway's rate limit: a token bucket per client (see :mod:`consumer.core.ratelimit`).

The client is the value of the configured API-key header when the request carries one, else
the peer address. ``POST /explain`` costs one token, ``POST /explain/batch`` one per request
in it. Over the limit the gateway answers 429 with ``Retry-After`` and counts the refusal in
``explainstream_gateway_rate_limited_total{route}``; nothing reaches Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from consumer.core.ratelimit import ClientBuckets

__all__ = ["MAX_BURST_DEFAULT", "GatewayLimiter"]

#: Burst when GATEWAY_RATE_BURST is unset: a full ``/explain/batch`` (MAX_BATCH) can pass.
MAX_BURST_DEFAULT = 32


class GatewayLimiter:
    """Per-client limiting for the gateway's routes, with its counters in ``registry``."""

    def __init__(
        self,
        rate_per_s: float | None,
        burst: int | None = None,
        *,
        key_header: str | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.buckets = (
            None
            if rate_per_s is None
            else ClientBuckets(
                rate_per_s, float(burst or max(MAX_BURST_DEFAULT, round(rate_per_s)))
            )
        )
        self.key_header = key_header
        self._clock = clock
        self.limited = Counter(
            "explainstream_gateway_rate_limited",
            "Gateway requests refused with 429 by GATEWAY_RATE_LIMIT",
            ["route"],
            registry=self.registry,
        )

    @classmethod
    def from_env(cls) -> GatewayLimiter:
        """GATEWAY_RATE_LIMIT, GATEWAY_RATE_BURST and GATEWAY_API_KEY_HEADER (via Settings,
        so a bad value fails at start naming the variable)."""
        from consumer.config import Settings

        s = Settings.from_env()
        return cls(s.gateway_rate_limit, s.gateway_rate_burst, key_header=s.gateway_api_key_header)

    def client(self, http: web.Request) -> str:
        """Whom a request is charged to."""
        if self.key_header:
            key = http.headers.get(self.key_header)
            if key:
                return f"key:{key}"
        return f"peer:{http.remote or 'unknown'}"

    def refuse(self, http: web.Request, cost: int, route: str) -> web.Response | None:
        """A 429 response when ``http`` is over its client's limit, else None (charged)."""
        if self.buckets is None:
            return None
        decision = self.buckets.take(self.client(http), float(cost), self._clock())
        if decision.allowed:
            return None
        self.limited.labels(route=route).inc()
        detail = (
            f"rate limit: {self.buckets.rate:g} requests/s with a burst of "
            f"{self.buckets.burst:g} per client (GATEWAY_RATE_LIMIT); this request costs "
            f"{cost}; retry after {decision.retry_after_header} s"
        )
        if cost > self.buckets.burst:
            detail += "; a batch larger than the burst never passes: split it"
        return web.json_response(
            {"detail": detail}, status=429, headers={"Retry-After": decision.retry_after_header}
        )

    async def metrics(self, _: web.Request) -> web.Response:
        """``GET /metrics``: the gateway's own counters."""
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
