"""Step time is bounded while urgent traffic is around (MAX_STEP_MS), on the real model.

A decode step cannot be interrupted: an urgent request that arrives during a long prompt
step waits for it. Measured with ``bench priority`` (4 slots, CPU): an urgent request waited
1.4 s behind a 269-token step of the low backlog, and urgent p95 under the backlog was 2.4x
idle; with prompt chunks cut to about MAX_STEP_MS it was 1.08x.
"""

from __future__ import annotations

from typing import Any

import pytest

from consumer.engines.llama import native
from consumer.engines.llama.plan import MIN_PROMPT_CHUNK
from tests.llama.helpers import request

pytestmark = pytest.mark.llama


@pytest.fixture
def step_sizes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = native.BatchMemory.decode

    def recording(self: native.BatchMemory, ctx: Any, n: int) -> int:
        sizes.append(n)
        return original(self, ctx, n)

    monkeypatch.setattr(native.BatchMemory, "decode", recording)
    return sizes


async def test_after_an_urgent_request_prompts_go_in_time_bounded_chunks(
    start_engine, step_sizes
) -> None:
    # 1 ms per step: every prompt step is cut to the minimum chunk.
    engine = await start_engine(max_step_ms=1.0, max_concurrent_requests=2)
    step_sizes.clear()  # the profile prefixes evaluated at load
    await engine.generate(request(0, max_tokens=2, priority=0))  # urgent: its prompt is not cut
    assert max(step_sizes) > MIN_PROMPT_CHUNK
    step_sizes.clear()
    low = await engine.generate(request(1, max_tokens=2, priority=3))
    assert low.completion_tokens == 2
    assert max(step_sizes) <= MIN_PROMPT_CHUNK
    assert len(step_sizes) >= 3, step_sizes  # the prompt took several steps


async def test_without_urgent_traffic_a_prompt_goes_in_one_step(start_engine, step_sizes) -> None:
    engine = await start_engine(max_step_ms=1.0, max_concurrent_requests=2)
    step_sizes.clear()
    await engine.generate(request(1, max_tokens=2, priority=3))
    assert max(step_sizes) > MIN_PROMPT_CHUNK
    assert len(step_sizes) == 2  # the whole prompt, then the second token
