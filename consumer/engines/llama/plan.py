"""The batch plan: pure decisions of the batch loop, tested with plain values.

Each pass the loop first decides here (who is admitted, who is preempted, which prompt
chunks ride in the batch, what to do when llama.cpp finds no KV room), then acts on the
native handles. Nothing in this module touches llama.cpp.

Priority has one owner, the runtime's scheduler: the engine keeps its waiting requests in
arrival order. The one exception is preemption: an urgent request that waits while every
slot is busy takes the slot of the least urgent running sequence, which goes back to the
waiting queue (keeping what it generated) at its original arrival position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "MIN_PROMPT_CHUNK",
    "URGENT",
    "URGENT_RECENT_S",
    "Chunk",
    "KvFullAction",
    "Running",
    "bound_steps",
    "choose_admissions",
    "choose_preemption",
    "default_threads",
    "on_kv_full",
    "plan_chunks",
    "prompt_room",
    "reusable_prefix",
]

#: Only requests of this priority (0, the ``urgent`` tier) preempt running sequences.
URGENT = 0


@dataclass(frozen=True, slots=True)
class Running:
    """A busy slot as the plan sees it."""

    priority: int
    order: int  # arrival number (smaller = earlier)
    generated: int  # tokens generated so far


@dataclass(frozen=True, slots=True)
class Chunk:
    """``take`` prompt tokens of slot ``slot`` go into this step's batch."""

    slot: int
    take: int
    last: bool  # the chunk ends the prompt: its last token's logits are sampled


class KvFullAction(Enum):
    """What to do when ``llama_decode`` reports that the KV cache has no room."""

    REQUEUE_NEWEST = "requeue-newest"  # free the newest sequence's cells, retry the step
    FAIL = "fail"  # a single sequence does not fit on its own


def choose_admissions(free_slots: int, waiting: int, *, draining: bool, kv_hold: bool) -> int:
    """How many waiting requests (from the front, arrival order) take free slots now.

    None while a reload drains the engine, and none while the KV cache is known to be full
    (``kv_hold``: set when a sequence had to be requeued for room, cleared when one
    finishes), so a requeued sequence is not readmitted straight into the same failure.
    """
    if draining or kv_hold:
        return 0
    return max(0, min(free_slots, waiting))


def choose_preemption(waiting_priority: int | None, running: Sequence[Running]) -> int | None:
    """Index into ``running`` of the sequence an urgent waiting request displaces, or None.

    ``running`` lists the busy slots when none is free. Only an urgent request preempts;
    the victim is the least urgent running sequence (ties: the latest arrival, which has
    the least invested), and never one at least as urgent as the waiting request.
    """
    if waiting_priority is None or waiting_priority > URGENT:
        return None
    best: int | None = None
    for i, r in enumerate(running):
        if r.priority <= waiting_priority:
            continue
        if best is None or (r.priority, r.order) > (running[best].priority, running[best].order):
            best = i
    return best


def stepping(priorities: Sequence[int], solo_urgent: bool) -> list[bool]:
    """Which of the sequences that could step take part in this step.

    On a CPU every sequence in a step slows every other one (the matrix work grows with the
    batch), so an urgent request sharing a step with a low-tier backlog runs several times
    slower than alone. With ``solo_urgent`` and an urgent sequence present, only urgent
    sequences step; the others keep their KV and resume when no urgent one is left. On a
    GPU a wider batch is nearly free, so the engine turns this off there.
    """
    if not solo_urgent or URGENT not in priorities:
        return [True] * len(priorities)
    return [p <= URGENT for p in priorities]


#: Prompt tokens a step carries at least, however slow they are, so prompts progress.
MIN_PROMPT_CHUNK = 16

#: Steps are bounded in time while an urgent request arrived this recently (seconds).
URGENT_RECENT_S = 60.0


def bound_steps(now: float, last_urgent: float | None, prompts_all_urgent: bool) -> bool:
    """Whether this step's prompt chunks are cut to MAX_STEP_MS (see :func:`prompt_room`).

    Only while urgent traffic is around: an urgent request arrived in the last
    ``URGENT_RECENT_S`` seconds. Cutting costs throughput (more, smaller steps: 0.94x -> 0.81x
    of llama-server at 8 sequences when always on), and without urgent traffic no arrival is
    worth it. Steps whose prompts are all urgent are not cut: they are the work the bound
    protects.
    """
    if prompts_all_urgent or last_urgent is None:
        return False
    return now - last_urgent <= URGENT_RECENT_S


def prompt_room(n_batch: int, n_generating: int, max_step_s: float, s_per_token: float) -> int:
    """How many prompt tokens this step may carry.

    ``n_batch`` bounds the whole batch. With ``max_step_s`` > 0 and a measured cost per batch
    token (``s_per_token``; 0 before the first measurement), prompt chunks are also cut so
    the step takes about ``max_step_s``: a step cannot be interrupted, so a request that
    arrives meanwhile waits for it to end. On the 2-core development machine a 269-token
    prompt step took 1.75 s; on a GPU the cost per token is small enough that ``n_batch``
    binds first.
    """
    room = max(0, n_batch - n_generating)
    if max_step_s <= 0 or s_per_token <= 0:
        return room
    by_time = int(max_step_s / s_per_token) - n_generating
    return min(room, max(MIN_PROMPT_CHUNK, by_time))


def plan_chunks(
    n_generating: int, prefilling: Sequence[tuple[int, int]], n_batch: int
) -> list[Chunk]:
    """Prompt chunks for this step.

    ``n_generating`` tokens (one per generating sequence) are already in the batch;
    ``prefilling`` lists ``(slot, prompt tokens left)`` oldest admission first. Chunks fill
    the rest of ``n_batch`` in that order, so the oldest admitted prompt finishes first and
    starts generating soonest.
    """
    room = n_batch - n_generating
    out: list[Chunk] = []
    for slot, left in prefilling:
        if room <= 0:
            break
        if left <= 0:
            continue
        take = min(left, room)
        out.append(Chunk(slot, take, take == left))
        room -= take
    return out


def on_kv_full(running_orders: Sequence[int]) -> tuple[KvFullAction, int | None]:
    """Recovery when the KV cache cannot hold this step's batch.

    ``running_orders`` are the arrival numbers of the sequences in the batch. Like
    llama.cpp's server, the newest sequence gives its cells back (it is requeued with what
    it generated) and the step is retried without it; a sequence alone that still does not
    fit fails. Returns the action and the index (into ``running_orders``) to requeue.
    """
    if len(running_orders) <= 1:
        return KvFullAction.FAIL, 0 if running_orders else None
    newest = max(range(len(running_orders)), key=running_orders.__getitem__)
    return KvFullAction.REQUEUE_NEWEST, newest


#: A model needs about its file size plus this share again (KV cache, compute buffers).
LOAD_OVERHEAD = 0.25


def free_old_first(new_model_bytes: int, context_bytes: int, available_bytes: int | None) -> bool:
    """Whether a reload must free the old model before loading the new one.

    Loading first keeps the old model serving if the new one fails; that needs room for
    both. When the new model (plus its context and a margin) does not fit in what is free
    now, the old one is freed first (and reloaded if the new one fails). Unknown free
    memory keeps the safe order.
    """
    if available_bytes is None:
        return False
    need = int(new_model_bytes * (1 + LOAD_OVERHEAD)) + context_bytes
    return need > available_bytes


def default_threads(usable_cpus: int) -> int:
    """ggml threads (single-token and batch steps) when N_THREADS is 0: every usable core.

    An earlier default left one core to the process's Python threads, because a single-token
    step measured faster on one thread than on two on the 2-core development machine. That
    measurement was distorted by a second, docked OpenMP team in the process (see
    :mod:`.engine`); with one team, two threads make single-sequence generation 1.7x faster
    there (78 vs 46 tokens/s) and 8-sequence steps equal.
    """
    return max(1, usable_cpus)


def reusable_prefix(cached: np.ndarray | None, tokens: np.ndarray) -> int:
    """How many leading ``tokens`` a slot's kept KV (``cached``) already holds.

    At most ``len(tokens) - 1``: the last prompt token is always decoded again, since its
    logits start the generation.
    """
    if cached is None or len(tokens) < 2:
        return 0
    n = min(len(cached), len(tokens) - 1)
    if n <= 0:
        return 0
    same = cached[:n] == tokens[:n]
    return n if bool(same.all()) else int(np.argmin(same))
