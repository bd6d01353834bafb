"""Compute accounting on the real model: each step's time is split over its sequences."""

from __future__ import annotations

import asyncio

import pytest

from tests.llama.helpers import request

pytestmark = pytest.mark.llama


async def test_compute_ms_of_a_batch_run_adds_up_to_the_engine_busy_time(start_engine) -> None:
    engine = await start_engine(max_concurrent_requests=4, cost_per_gpu_hour=2.0)
    await engine.warmup()
    before = engine.stats()["busy_s"]
    # Mixed lengths, more requests than slots: sequences join and leave the batch.
    results = await asyncio.gather(
        *(
            engine.generate(request(i, max_tokens=8 + 6 * i, ignore_eos=True, seed=i))
            for i in range(10)
        )
    )
    stats = engine.stats()
    busy_ms = (stats["busy_s"] - before) * 1000.0
    total = sum(r.compute_ms for r in results)
    assert all(r.compute_ms > 0 for r in results)
    assert total == pytest.approx(busy_ms, rel=0.05)
    assert stats["cost_per_request"] > 0
    assert stats["cost_total"] == pytest.approx(stats["compute_s"] / 3600.0 * 2.0, rel=1e-3)


async def test_a_request_alone_is_charged_its_whole_steps(start_engine) -> None:
    engine = await start_engine(max_concurrent_requests=2)
    before = engine.stats()["busy_s"]
    short = await engine.generate(request(0, max_tokens=8, ignore_eos=True))
    long = await engine.generate(request(0, max_tokens=48, ignore_eos=True))
    busy_ms = (engine.stats()["busy_s"] - before) * 1000.0
    assert short.compute_ms < long.compute_ms
    assert short.compute_ms + long.compute_ms == pytest.approx(busy_ms, rel=0.05)


async def test_bench_overhead_figures_are_reported_per_batch_size(start_engine) -> None:
    engine = await start_engine(max_concurrent_requests=4)
    await engine.generate(request(0, max_tokens=6, ignore_eos=True))
    await asyncio.gather(
        *(engine.generate(request(i, max_tokens=6, ignore_eos=True)) for i in range(4))
    )
    stats = engine.stats()
    assert stats["step_overhead_us_1seq"] > 0
    assert stats["step_overhead_us_multi"] > 0
    assert stats["python_s"] < stats["busy_s"]
