"""Shared values for the llama tests."""

from __future__ import annotations

from typing import Any

from consumer.engines.base import GenerationRequest

CONTEXTS: list[dict[str, Any]] = [
    {
        "analysis_type": "sentiment",
        "symbol": "AAPL",
        "metrics": {"sentiment_score": 0.72, "current_price": 189.5, "iv_rank": 41.0},
        "attributes": {"source": "news"},
    },
    {
        "analysis_type": "volatility",
        "symbol": "TSLA",
        "metrics": {"iv_rank": 88.0, "implied_volatility": 0.71, "put_call_ratio": 1.4},
        "attributes": {"expiry": "2026-12-18"},
    },
    {
        "analysis_type": "momentum",
        "symbol": "MSFT",
        "metrics": {"rsi_14": 71.3, "current_price": 421.2},
        "attributes": {},
    },
    {
        "analysis_type": "earnings",
        "symbol": "NVDA",
        "metrics": {"eps_surprise": 0.12, "revenue_growth": 0.94},
        "attributes": {"quarter": "Q3"},
    },
]


def request(i: int = 0, **overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "request_id": f"req-{i}",
        "context": CONTEXTS[i % len(CONTEXTS)],
        "max_tokens": 24,
        "temperature": 0.0,
    }
    values.update(overrides)
    return GenerationRequest(**values)


async def wait_stats(engine: Any, timeout_s: float = 60.0, **want: int) -> None:
    """Wait until ``engine.stats()`` shows ``want`` (e.g. slots_busy=4, waiting=2): the
    event a test acts on, instead of a sleep that may be too short or long on another CPU."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        stats = engine.stats()
        if all(stats.get(k) == v for k, v in want.items()):
            return
        if time.monotonic() > deadline:
            shown = {k: stats.get(k) for k in want}
            raise AssertionError(f"engine never showed {want} (last {shown})")
        await asyncio.sleep(0.005)
