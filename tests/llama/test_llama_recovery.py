"""The llama engine recovers instead of failing everyone: KV exhaustion, tight reloads."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from schemas.errors import ModelLoadError
from tests.llama.helpers import request

pytestmark = pytest.mark.llama


async def test_a_full_kv_cache_requeues_the_newest_sequence_and_everyone_finishes(
    start_engine,
) -> None:
    # Eight sequences of ~130 prompt tokens + 60 generated each need ~1,500 cells (the
    # profile prefixes are shared); a 1,024-cell context cannot hold them all at once.
    engine = await start_engine(max_concurrent_requests=8, seq_budget_tokens=256)
    engine.context_overrides.update(n_ctx=1024, kv_unified=True)  # one shared cell pool
    await engine.reload()  # recreate the context with the override
    assert engine.stats()["n_ctx"] == 1024
    results = await asyncio.gather(
        *(engine.generate(request(i, max_tokens=60, ignore_eos=True, seed=i)) for i in range(8))
    )
    assert [r.completion_tokens for r in results] == [60] * 8
    stats = engine.stats()
    assert stats["kv_full_events"] >= 1
    assert stats["kv_full_requeued"] >= 1
    # A requeued sequence waits for freed cells before it is readmitted, so requeues stay
    # few (3 measured); readmitting it at once would requeue it again on every pass.
    assert stats["kv_full_requeued"] <= 8
    assert stats["requests_failed"] == 0
    assert engine.alive()


async def test_the_production_kv_layout_holds_every_sequence_at_its_full_budget(
    start_engine,
) -> None:
    """One KV stream per sequence (the layout production runs): a stream holds the
    sequence's whole budget, so eight sequences each filling prompt + max_tokens to the
    last token all finish with no KV-full event. (Running out of cells is reachable only
    with a shared pool, the test above.)"""
    budget = 256
    engine = await start_engine(max_concurrent_requests=8, seq_budget_tokens=budget)
    assert "kv_unified" not in engine.context_overrides
    full = []
    for i in range(8):
        probe = request(i, seed=i)
        _, enc = engine.render_prompt(probe.prompt_profile, probe.context)
        full.append(request(i, max_tokens=budget - len(enc.tokens), ignore_eos=True, seed=i))
    results = await asyncio.gather(*(engine.generate(r) for r in full))
    stats = engine.stats()
    # The last token of a budget is not generated: the stream ends one short of it.
    assert all(r.prompt_tokens + r.completion_tokens >= budget - 1 for r in results)
    assert stats["kv_full_events"] == 0
    assert stats["requests_failed"] == 0


async def test_reload_that_frees_the_old_model_first_still_serves(
    start_engine, model_path, tmp_path
) -> None:
    engine = await start_engine(max_concurrent_requests=2)
    engine.reload_free_first = True
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, copy)
    await engine.reload(str(copy))
    assert engine.stats()["model_path"] == str(copy)
    assert (await engine.generate(request(0, max_tokens=4))).completion_tokens > 0


async def test_a_failed_free_first_reload_brings_the_old_model_back(start_engine, tmp_path) -> None:
    engine = await start_engine(max_concurrent_requests=2)
    engine.reload_free_first = True
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    before = engine.stats()["model_path"]
    with pytest.raises(ModelLoadError, match=r"truncated\.gguf"):
        await engine.reload(str(truncated))
    assert engine.stats()["model_path"] == before
    assert (await engine.generate(request(0, max_tokens=4))).completion_tokens > 0
    assert engine.alive()


async def test_alive_is_false_once_the_loop_thread_died(start_engine) -> None:
    engine = await start_engine(max_concurrent_requests=1)
    assert engine.alive()

    # A bug in the loop must not strand callers: break the loop's step and watch it die.
    def boom(_t0: float, _c0: float) -> None:
        raise RuntimeError("injected loop bug")

    engine._loop._step = boom
    with pytest.raises(Exception, match="injected loop bug"):
        await engine.generate(request(0, max_tokens=4))
    await asyncio.to_thread(engine._thread.join, 30)
    assert not engine.alive()
