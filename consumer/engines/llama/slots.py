"""The sequences of the batch loop: slots, the waiting queue, admission and completion.

Owned by the loop thread. Waiting requests are kept in arrival order (a heap keyed by
arrival number, so a preempted or requeued sequence goes back to its original place); the
decisions come from :mod:`.plan`.
"""

from __future__ import annotations

import heapq
import math
import time

import numpy as np

from consumer.engines.base import GenerationResult, token_timing
from consumer.engines.llama import plan
from consumer.engines.llama.counters import Counters
from consumer.engines.llama.jobs import Job, Slot
from consumer.engines.llama.native import NativeModel
from consumer.engines.llama.sampling import free_sampler, make_sampler
from schemas.errors import DeadlineExceeded, EngineError, ExplainstreamError, RequestRejected

__all__ = ["SlotTable", "check_budget"]


class SlotTable:
    """Slots and waiting jobs of one engine (loop thread only)."""

    def __init__(self, n_slots: int, seq_budget: int, counters: Counters) -> None:
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self.waiting: list[tuple[int, Job]] = []  # heap by arrival order
        self.kv_hold = False  # the KV cache was full: admit nobody until cells are freed
        self.m: NativeModel | None = None
        self.token_trace: dict[str, tuple[list[int], list[float]]] | None = None
        self._seq_budget = seq_budget
        self._c = counters
        self._admissions = 0

    def push(self, job: Job) -> None:
        """Queue a job at its arrival position."""
        heapq.heappush(self.waiting, (job.order, job))
        self._c.waiting = len(self.waiting)

    def expire(self, now: float) -> None:
        if not self.waiting:
            return
        keep = []
        for entry in self.waiting:
            job = entry[1]
            dl = job.request.deadline_monotonic
            if job.dead():
                free_sampler(job.sampler)
                job.sampler = None
            elif dl is not None and now >= dl:
                if job.generated:
                    self.finish(job, "deadline", now)
                else:
                    rid = job.request.request_id
                    self.fail(job, DeadlineExceeded(f"request {rid} expired in queue"))
            else:
                keep.append(entry)
        if len(keep) != len(self.waiting):
            heapq.heapify(keep)
            self.waiting = keep
            self._c.waiting = len(keep)

    def admit(self, draining: bool) -> None:
        """Fill free slots from the front of the queue, or preempt for an urgent job."""
        free = [s for s in self.slots if s.job is None]
        if not free and self.waiting and not draining:
            self._maybe_preempt()
            return
        n = plan.choose_admissions(
            len(free), len(self.waiting), draining=draining, kv_hold=self.kv_hold
        )
        for _ in range(n):
            while self.waiting:
                _, job = heapq.heappop(self.waiting)
                slot = self._pick_slot(free, job)
                if self._start(slot, job):
                    free.remove(slot)
                    break
        self._c.waiting = len(self.waiting)

    def _pick_slot(self, free: list[Slot], job: Job) -> Slot:
        """The free slot whose kept KV shares the longest prefix with the job's tokens."""
        if job.prompt is None or not any(s.cached is not None for s in free):
            return free[0]
        tokens = np.asarray(job.prompt + job.generated, np.int32)
        return max(free, key=lambda s: plan.reusable_prefix(s.cached, tokens))

    def _maybe_preempt(self) -> None:
        urgent = min(
            (e for e in self.waiting if e[1].request.priority <= plan.URGENT and not e[1].dead()),
            default=None,
            key=lambda e: e[0],
        )
        if urgent is None:
            return
        running = [s for s in self.slots if s.job is not None]
        views = [
            plan.Running(s.job.request.priority, s.job.order, len(s.job.generated))
            for s in running
            if s.job
        ]
        pick = plan.choose_preemption(urgent[1].request.priority, views)
        if pick is None:
            return
        slot = running[pick]
        self._c.preempted += 1
        self.requeue(slot)
        self.waiting.remove(urgent)
        heapq.heapify(self.waiting)
        self._start(slot, urgent[1])
        self._c.waiting = len(self.waiting)

    def requeue(self, slot: Slot) -> None:
        job = slot.job
        assert job is not None
        job.preemptions += 1
        self.release(slot)
        heapq.heappush(self.waiting, (job.order, job))

    def _start(self, slot: Slot, job: Job) -> bool:
        import llama_cpp

        m = self.m
        assert m is not None
        if job.dead():
            free_sampler(job.sampler)
            job.sampler = None
            return False
        req = job.request
        try:
            if job.prompt is None or (job.generation != m.generation and not job.generated):
                # reload fallback
                enc = m.prompter.encode(req.prompt_profile, req.context, req.answer_prefix)
                check_budget(len(enc.tokens), req.max_tokens, self._seq_budget)
                job.prompt, job.prefix_len, job.generation = (
                    enc.tokens,
                    enc.prefix_len,
                    m.generation,
                )
                job.text = bytearray(enc.answer_prefix.encode())
            if job.sampler is None:
                profile = m.profiles.get(req.prompt_profile)
                job.sampler = make_sampler(req, profile, m.n_vocab, m.eog_ids, m.vocab)
                job.stops = tuple(s.encode() for s in m.prompter.stop if s)
                job.started = time.monotonic()
                if self.token_trace is not None:
                    job.trace = []
        except ExplainstreamError as exc:
            self.fail(job, exc)
            return False
        except Exception as exc:
            self.fail(job, EngineError(f"prompt preparation failed: {exc}"))
            return False
        # After preemption the generated tokens are re-evaluated too (the sampler's state
        # is kept), so the sequence continues exactly where it stopped.
        tokens = np.asarray(job.prompt + job.generated, np.int32)
        prefix = m.prefix_seq.get(req.prompt_profile)
        prefix_n = prefix[1] if prefix is not None and job.prefix_len == prefix[1] else 0
        # Like llama-server's slots: a slot keeps its last sequence's KV, and a prompt that
        # shares more than the profile prefix with it drops only the differing tail.
        start = plan.reusable_prefix(slot.cached, tokens)
        slot.cached = None
        if start > prefix_n:
            llama_cpp.llama_memory_seq_rm(m.mem, slot.seq_id, start, -1)
        else:
            llama_cpp.llama_memory_seq_rm(m.mem, slot.seq_id, -1, -1)
            start = prefix_n
            if prefix is not None and prefix_n:
                llama_cpp.llama_memory_seq_cp(m.mem, prefix[0], slot.seq_id, -1, -1)
        if start:
            self._c.prefix_hits += 1
            self._c.prefix_tokens += start
        self._admissions += 1
        slot.job, slot.tokens, slot.fed, slot.n_past = job, tokens, start, start
        slot.last, slot.out_idx, slot.admitted = -1, -1, self._admissions
        self._c.busy_slots += 1
        if not job.generated:
            self._c.prompt += len(tokens)
        return True

    # -------------------------------------------------------------------------- act

    def expire_prefilling(self, now: float) -> list[Job]:
        out = []
        for slot in self.slots:
            job = slot.job
            if job is None or slot.last >= 0:
                continue
            dl = job.request.deadline_monotonic
            if dl is not None and now >= dl:
                self.release(slot)
                if job.generated:  # requeued after generating: return what it has
                    self.finish(job, "deadline", now)
                else:
                    out.append(job)
        return out

    # ------------------------------------------------------------------- completion

    def release(self, slot: Slot, keep: bool = False) -> None:
        """Free the slot; ``keep`` leaves a finished sequence's KV for prefix reuse."""
        import llama_cpp

        job = slot.job
        if job is None:
            return
        slot.cached = None
        if self.m is not None:
            if keep and not self.m.unified and slot.n_past > 0:
                # Its own stream: kept cells cost nobody room. Positions 0..n_past-1.
                slot.cached = np.asarray(job.prompt or [], np.int32)
                slot.cached = np.concatenate((slot.cached, np.asarray(job.generated, np.int32)))[
                    : slot.n_past
                ]
            else:
                llama_cpp.llama_memory_seq_rm(self.m.mem, slot.seq_id, -1, -1)
        slot.job, slot.tokens, slot.last, slot.out_idx = None, None, -1, -1
        self._c.busy_slots -= 1
        self.kv_hold = False  # cells were freed: admissions may resume

    def finish(self, job: Job, reason: str, now: float) -> None:
        free_sampler(job.sampler)
        job.sampler = None
        n = job.n_logprob
        ttft, tpot = token_timing(
            job.arrived, job.first_token_at, job.last_token_at, len(job.generated)
        )
        result = GenerationResult(
            text=job.text.decode("utf-8", "ignore").strip(),
            prompt_tokens=len(job.prompt or ()),
            completion_tokens=len(job.generated),
            finish_reason=reason,
            confidence_score=math.exp(job.logprob_sum / n) if n else None,
            processing_time_ms=(now - job.started) * 1000.0,
            compute_ms=job.compute_s * 1000.0,
            first_token_s=ttft,
            time_per_output_token_s=tpot,
        )
        self._c.completed += 1
        self._c.compute_s += job.compute_s
        if self.token_trace is not None and job.trace is not None:
            self.token_trace[job.request.request_id] = (list(job.generated), job.trace)
        job.resolve(result, None)

    def fail(self, job: Job, err: BaseException, count: bool = True) -> None:
        free_sampler(job.sampler)
        job.sampler = None
        if count and not isinstance(err, RequestRejected | DeadlineExceeded):
            self._c.failed += 1
        job.resolve(None, err)

    def fail_slot(self, slot: Slot, err: BaseException) -> None:
        job = slot.job
        assert job is not None
        self.release(slot)
        self.fail(job, err)

    def fail_all(self, err: BaseException) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self.fail_slot(slot, err)
        for _, job in self.waiting:
            self.fail(job, err)
        self.waiting.clear()
        self._c.waiting = 0

    # ------------------------------------------------------------------------ reload


def check_budget(prompt_tokens: int, max_tokens: int, budget: int) -> None:
    """RequestRejected when the prompt plus ``max_tokens`` exceeds the per-sequence budget."""
    if prompt_tokens + max_tokens > budget:
        raise RequestRejected(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) "
            f"exceeds the per-sequence budget of {budget} tokens"
        )
