"""Every llama_decode of the llama engine runs on its one loop thread.

llama.cpp's OpenMP build keeps a worker team per calling thread. When the model was loaded
(and the prompt prefixes evaluated) on an executor thread, that thread's team stayed docked,
libgomp counted it as busy and throttled the loop thread's barrier spin: 8-sequence steps
took 88 ms instead of ~65 ms on 2 cores (``bench peer`` at concurrency 8: 0.80x -> 0.94x).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from consumer.engines.llama import native
from tests.llama.helpers import request

pytestmark = pytest.mark.llama


async def test_prefix_evaluation_and_generation_decode_on_the_loop_thread(
    start_engine, monkeypatch
) -> None:
    callers: list[str] = []
    original = native.BatchMemory.decode

    def recording(self: native.BatchMemory, ctx: Any, n: int) -> int:
        callers.append(threading.current_thread().name)
        return original(self, ctx, n)

    monkeypatch.setattr(native.BatchMemory, "decode", recording)
    engine = await start_engine(max_concurrent_requests=2)
    at_load = len(callers)
    assert at_load > 0, "the profile prefixes are evaluated at load"
    await engine.generate(request(1, max_tokens=4))
    assert len(callers) > at_load
    assert set(callers) == {"llama-engine"}


async def test_a_failed_load_ends_its_loop_thread(start_engine, tmp_path) -> None:
    from schemas.errors import ModelLoadError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"bad\.gguf"):
        await start_engine(model_path=str(bad))
    assert "llama-engine" not in {t.name for t in threading.enumerate()}


async def test_a_start_cancelled_while_loading_stops_its_thread(settings_factory) -> None:
    import asyncio

    from consumer.engines.llama import LlamaEngine

    engine = LlamaEngine(settings_factory())
    task = asyncio.create_task(engine.start())
    await asyncio.sleep(0)  # the start is under way: its thread is loading
    assert "llama-engine" in {t.name for t in threading.enumerate()}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "llama-engine" not in {t.name for t in threading.enumerate()}
    await engine.start()  # nothing left over blocks a later start
    try:
        result = await engine.generate(request(2, max_tokens=4))
        assert result.completion_tokens > 0
    finally:
        await engine.stop()


async def test_the_sequential_engine_calls_llama_cpp_from_one_thread(
    start_engine, monkeypatch
) -> None:
    import llama_cpp.llama_cpp as native_api

    callers: list[str] = []
    original = native_api.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        callers.append(threading.current_thread().name)
        return int(original(ctx, batch))

    monkeypatch.setattr(native_api, "llama_decode", recording)
    engine = await start_engine("sequential")
    for i in range(3):
        await engine.generate(request(i, max_tokens=3))
    assert len(callers) >= 9
    assert len(set(callers)) == 1 and callers[0].startswith("sequential-llama"), set(callers)
    await engine.stop()
    assert not any(t.name.startswith("sequential-llama") for t in threading.enumerate())
