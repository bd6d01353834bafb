"""The job bridge: one request's state shared by the asyncio side and the batch loop thread.

The asyncio side creates a :class:`Job` (with its prompt already rendered and tokenised off
the decode thread) and hands it to the loop through a thread-safe inbox; the loop resolves
the job's future with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consumer.engines.base import GenerationRequest

__all__ = ["Job", "Slot", "call_soon", "set_future"]


@dataclass(eq=False, slots=True)
class Job:
    """One request inside the engine; generation state survives preemption and requeueing."""

    request: GenerationRequest
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    order: int  # arrival number: the waiting queue's order
    cancelled: bool = False
    prompt: list[int] | None = None
    prefix_len: int = 0
    generation: int = -1  # model generation the prompt was tokenised with
    generated: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    logprob_sum: float = 0.0
    n_logprob: int = 0
    sampler: Any = None
    started: float = 0.0
    preemptions: int = 0
    stops: tuple[bytes, ...] = ()
    trace: list[float] | None = None
    compute_s: float = 0.0  # this request's share of the steps it was in
    arrived: float = field(default_factory=time.monotonic)  # when generate() took it
    first_token_at: float | None = None  # monotonic step clock of the first sampled token
    last_token_at: float | None = None

    def dead(self) -> bool:
        """The caller gave up (cancelled) or the future is already resolved."""
        return self.cancelled or self.future.done()

    def resolve(self, result: Any, err: BaseException | None) -> None:
        """Resolve the future on its own event loop (from any thread)."""
        call_soon(self.loop, set_future, self.future, result, err)


@dataclass(eq=False, slots=True)
class Slot:
    """One sequence id of the context and the job it runs."""

    seq_id: int
    job: Job | None = None
    tokens: np.ndarray | None = None  # prompt (+ generated, after preemption) to prefill
    fed: int = 0  # how many of ``tokens`` are in the KV cache
    n_past: int = 0  # next position
    last: int = -1  # sampled token not yet decoded (generating phase)
    out_idx: int = -1  # batch index whose logits this slot samples this step
    admitted: int = 0  # admission number (prompt chunks go oldest admission first)
    cached: np.ndarray | None = None  # tokens whose KV a free slot kept (prefix reuse)


def set_future(fut: asyncio.Future[Any], result: Any, err: BaseException | None) -> None:
    """Resolve ``fut`` unless it is done already (runs on the future's loop)."""
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(result)


def call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """``call_soon_threadsafe`` that tolerates a closed loop (its caller is gone)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
