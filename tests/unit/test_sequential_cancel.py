"""Sequential engine: a cancelled generate keeps the model locked until its thread ends.

The worker thread is a stand-in for ``create_chat_completion`` that (like llama.cpp between
tokens) cannot be interrupted at once; the test checks that no second request, reload or
stop ever touches the model while it runs (issue 9, defect 4).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from consumer.config import Settings
from consumer.engines.base import GenerationRequest, GenerationResult, ModelInfo
from consumer.engines.sequential import SequentialEngine


class _Model:
    def __init__(self, engine: _ProbeEngine) -> None:
        self.engine = engine

    def close(self) -> None:
        self.engine.events.append(("close", self.engine.active))


class _ProbeEngine(SequentialEngine):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.guard = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.events: list[tuple[str, int]] = []
        self.started = threading.Event()

    def _load(self, path: str) -> tuple[Any, ModelInfo, list[int]]:
        self.events.append(("load", self.active))
        return _Model(self), ModelInfo("probe", "none", 0, 0, "0" * 64), []

    def _run(
        self, llm: Any, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> GenerationResult:
        with self.guard:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        time.sleep(0.4)  # a decode step in C: cancellation is only seen between tokens
        with self.guard:
            self.active -= 1
        return GenerationResult("x", 1, 1, "stop")


def _request(i: int) -> GenerationRequest:
    return GenerationRequest(request_id=f"r{i}", context={"analysis_type": "t"}, max_tokens=4)


@pytest.fixture
def engine() -> _ProbeEngine:
    return _ProbeEngine(Settings.from_env({}, engine="sequential", max_concurrent_requests=4))


async def _cancel_while_running(engine: _ProbeEngine) -> None:
    engine.started.clear()
    task = asyncio.create_task(engine.generate(_request(0)))
    await asyncio.to_thread(engine.started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_request_does_not_let_the_next_one_run_concurrently(
    engine: _ProbeEngine,
) -> None:
    await engine.start()
    await _cancel_while_running(engine)
    await engine.generate(_request(1))
    assert engine.max_active == 1


async def test_reload_and_stop_wait_for_the_running_thread(engine: _ProbeEngine) -> None:
    await engine.start()
    await _cancel_while_running(engine)
    await engine.reload()
    await _cancel_while_running(engine)
    await engine.stop()
    # (event, threads running at that moment): never a load or close under a running thread
    assert [e for e in engine.events if e[0] in {"load", "close"}] == [
        ("load", 0),
        ("load", 0),
        ("close", 0),
        ("close", 0),
    ]
