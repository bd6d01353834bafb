"""The batch loop thread: it owns the context, the slots and the waiting queue.

Like llama.cpp server's ``update_slots`` each pass first decides (expire, admit in arrival
order, maybe preempt for an urgent request: :mod:`.plan`), then builds one ``llama_batch``:
one token per generating sequence, then prompt chunks of newly admitted sequences up to
``n_batch``. It calls ``llama_decode`` once and samples every sequence that produced logits
with its own C-side sampler chain. A decode that finds no KV room requeues the newest
sequence and retries. Each pass's time is split evenly over the sequences in its batch
(``compute_ms``).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from consumer.engines.llama import plan
from consumer.engines.llama.counters import Counters
from consumer.engines.llama.jobs import Job, Slot, call_soon, set_future
from consumer.engines.llama.native import BatchMemory, NativeModel
from consumer.engines.llama.sampling import Logprobs, Pieces, free_sampler, hit_stop
from consumer.engines.llama.slots import SlotTable
from schemas.errors import DeadlineExceeded, EngineError, ExplainstreamError, ModelLoadError

__all__ = ["BatchLoop", "Reload"]

log = logging.getLogger(__name__)

#: (model path, profile set, future, its loop): a reload request handed to the loop.
Reload = tuple[str, Any, Any, Any]


class BatchLoop:
    """Runs in one thread (:meth:`run`); everything else talks to it through ``inbox``."""

    def __init__(
        self,
        n_slots: int,
        batch: BatchMemory,
        seq_budget: int,
        counters: Counters,
        swap: Callable[[NativeModel | None, str, Any], NativeModel],
    ) -> None:
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.t = SlotTable(n_slots, seq_budget, counters)
        self._b = batch
        self._n_batch = batch.n_batch
        self._seq_budget = seq_budget
        self._c = counters
        self._swap_fn = swap
        self._draining: list[Reload] = []
        self._logprobs: Logprobs | None = None
        self._pieces: Pieces | None = None
        #: Urgent sequences step alone while any runs (CPU only; see plan.stepping).
        self.solo_urgent = False
        #: MAX_STEP_MS in seconds: prompt chunks are cut so a step takes about this long.
        self.max_step_s = 0.0
        #: Measured seconds per batch token of multi-token steps (moving average).
        self.s_per_token = 0.0
        #: When the last urgent request arrived (monotonic), None before the first.
        self.last_urgent: float | None = None

    @property
    def m(self) -> NativeModel | None:
        """The model being served."""
        return self.t.m

    def attach(self, m: NativeModel) -> None:
        """Serve ``m`` (before the thread starts, or from the thread after a swap)."""
        self.t.m = m
        for slot in self.t.slots:
            slot.cached = None  # kept KV belonged to the previous context
        self._logprobs = Logprobs(len(self.t.slots), m.n_vocab)
        self._pieces = Pieces(m.vocab)

    # ------------------------------------------------------------------------ thread

    def run(self) -> None:
        """The thread's body: serve until a ``stop`` arrives; never strands a caller.

        A crash is logged, fails every pending request and ends the thread, which the
        engine's ``alive()`` then reports (the service's liveness escalates it).
        """
        try:
            self._loop()
        except BaseException as exc:
            log.exception("llama engine loop crashed")
            self.t.fail_all(EngineError(f"llama engine loop crashed: {exc!r}"))
        finally:
            self._shutdown()

    def _loop(self) -> None:
        while True:
            idle = self._c.busy_slots == 0 and not (self.t.waiting and not self._draining)
            if not self._pump(block=idle and not self._draining):
                return
            if self._draining and self._c.busy_slots == 0:
                self._swap()
                continue
            t0, c0 = time.perf_counter(), time.thread_time()
            self.t.expire(time.monotonic())
            self.t.admit(bool(self._draining))
            if self._c.busy_slots:
                self._step(t0, c0)

    def drain_inbox(self) -> None:
        """Drop undelivered messages (after a start that never ran the loop)."""
        while True:
            try:
                self.inbox.get_nowait()
            except queue.Empty:
                return

    def _pump(self, block: bool) -> bool:
        first = True
        while True:
            try:
                kind, payload = self.inbox.get() if block and first else self.inbox.get_nowait()
            except queue.Empty:
                return True
            first = False
            if kind == "submit":
                if payload.request.priority <= plan.URGENT:
                    self.last_urgent = time.monotonic()
                self.t.push(payload)
            elif kind == "reload":
                self._draining.append(payload)
            elif kind == "stop":
                return False

    # ---------------------------------------------------------------------- decide

    def _fill(self) -> tuple[int, list[Slot], list[tuple[Slot, int]]]:
        """Write this step's batch; returns its size, the slots in it and prompt chunks."""
        b = self._b
        n = 0
        in_batch: list[Slot] = []
        ready = [
            s for s in self.t.slots if s.job is not None and (s.last >= 0 or s.tokens is not None)
        ]
        steps = plan.stepping([s.job.request.priority for s in ready if s.job], self.solo_urgent)
        waiting = {id(s) for s, go in zip(ready, steps, strict=True) if not go}
        for slot in self.t.slots:
            if id(slot) in waiting:
                continue
            if slot.job is not None and slot.last >= 0:
                b.token[n], b.pos[n], b.seq[n], b.logits[n] = slot.last, slot.n_past, slot.seq_id, 1
                slot.out_idx = n
                n += 1
                in_batch.append(slot)
        prefilling = sorted(
            (s for s in self.t.slots if s.job is not None and s.last < 0 and id(s) not in waiting),
            key=_admitted,
        )
        all_urgent = all(
            s.job is not None and s.job.request.priority <= plan.URGENT for s in prefilling
        )
        bound = plan.bound_steps(time.monotonic(), self.last_urgent, all_urgent)
        room = plan.prompt_room(
            self._n_batch, n, self.max_step_s if bound else 0.0, self.s_per_token
        )
        chunks = plan.plan_chunks(
            n,
            [(i, len(s.tokens) - s.fed) for i, s in enumerate(prefilling) if s.tokens is not None],
            n + room,
        )
        fed: list[tuple[Slot, int]] = []
        for ch in chunks:
            slot = prefilling[ch.slot]
            assert slot.tokens is not None
            take = ch.take
            b.token[n : n + take] = slot.tokens[slot.fed : slot.fed + take]
            b.pos[n : n + take] = b.ramp[slot.n_past : slot.n_past + take]
            b.seq[n : n + take] = slot.seq_id
            b.logits[n : n + take] = 0
            slot.out_idx = -1
            n += take
            if ch.last:
                b.logits[n - 1] = 1
                slot.out_idx = n - 1
            fed.append((slot, take))
            in_batch.append(slot)
        return n, in_batch, fed

    def _decode(self) -> tuple[int, list[Slot], list[tuple[Slot, int]], float, float] | None:
        """Fill and decode, recovering from a full KV cache; None when nothing ran."""
        m = self.m
        assert m is not None
        decode_s = decode_cpu = 0.0
        while True:
            n, in_batch, fed = self._fill()
            if n == 0:
                return None
            t1, k1 = time.perf_counter(), time.thread_time()
            rc = self._b.decode(m.ctx, n)
            decode_s += time.perf_counter() - t1
            decode_cpu += time.thread_time() - k1
            if rc == 0:
                return n, in_batch, fed, decode_s, decode_cpu
            if rc != 1:
                err = EngineError(f"llama_decode failed ({rc}) with {n} tokens")
                for slot in list(in_batch):
                    if slot.job is not None:
                        self.t.fail_slot(slot, err)
                return None
            self._c.kv_full += 1
            action, idx = plan.on_kv_full([s.job.order for s in in_batch if s.job])
            if action is plan.KvFullAction.REQUEUE_NEWEST and idx is not None:
                self._c.kv_requeued += 1
                self.t.requeue(in_batch[idx])
                self.t.kv_hold = True  # after requeue: releasing a slot clears the hold
                log.warning("KV cache full: requeued the newest sequence and retried")
            else:
                slot = in_batch[0]
                self.t.fail_slot(
                    slot, EngineError(f"one sequence does not fit the KV cache ({n} tokens)")
                )

    def _step(self, t0: float, c0: float) -> None:
        """One pass's batch: decode, sample, finish; ``t0``/``c0`` wall/CPU at pass start."""
        import llama_cpp

        m, b = self.m, self._b
        assert m is not None and self._logprobs is not None and self._pieces is not None
        for slot in self.t.slots:
            if slot.job is not None and slot.job.dead():
                job = slot.job
                self.t.release(slot)
                free_sampler(job.sampler)
                job.sampler = None
        ran = self._decode()
        if ran is None:
            return
        n, in_batch, fed, decode_s, decode_cpu = ran
        if n >= plan.MIN_PROMPT_CHUNK:
            cost = decode_s / n
            self.s_per_token = cost if not self.s_per_token else 0.8 * self.s_per_token + 0.2 * cost
        for slot, take in fed:
            slot.fed += take
            slot.n_past += take
        t2 = time.perf_counter()
        active = sorted((s for s in in_batch if s.out_idx >= 0), key=_out_idx)
        out_tok = b.out_tok
        for i, slot in enumerate(active):
            assert slot.job is not None
            out_tok[i] = slot.job.sampler.sample(m.ctx, slot.out_idx)
        t3 = time.perf_counter()
        lps = self._logprobs.compute(m.ctx, out_tok, len(active))
        t4 = time.perf_counter()
        now = time.monotonic()
        jobs = [s.job for s in in_batch if s.job is not None]
        done: list[tuple[Job, str]] = []
        produced = 0
        n_gen = 0
        for i, slot in enumerate(active):
            running = slot.job
            assert running is not None
            job = running
            if slot.last >= 0:
                slot.n_past += 1
                n_gen += 1
            t = int(out_tok[i])
            req = job.request
            if not req.ignore_eos and llama_cpp.llama_vocab_is_eog(m.vocab, t):
                done.append((job, "stop"))
                self.t.release(slot, keep=True)
                continue
            job.generated.append(t)
            if job.first_token_at is None:
                job.first_token_at = now
            job.last_token_at = now
            if lps is not None:
                lp = float(lps[i])
                job.logprob_sum += lp
                job.n_logprob += 1
                if job.trace is not None:
                    job.trace.append(lp)
            produced += 1
            piece = self._pieces.get(t)
            job.text += piece
            slot.last = t
            reason = None
            if job.stops and not req.ignore_eos and hit_stop(job.text, job.stops, len(piece)):
                reason = "stop"
            elif len(job.generated) >= req.max_tokens or slot.n_past + 1 >= self._seq_budget:
                reason = "length"
            elif req.deadline_monotonic is not None and now >= req.deadline_monotonic:
                reason = "deadline"
            if reason is not None:
                done.append((job, reason))
                self.t.release(slot, keep=True)
        expired = self.t.expire_prefilling(now)
        dt = time.perf_counter() - t0
        share = dt / len(jobs)
        for job in jobs:
            job.compute_s += share
        for job, reason in done:
            self.t.finish(job, reason, now)
        for job in expired:
            rid = job.request.request_id
            self.t.fail(job, DeadlineExceeded(f"request {rid} expired in prefill"), count=False)
        self._c.add_step(
            n_tokens=n,
            n_gen=n_gen,
            n_seqs=len(jobs),
            produced=produced,
            step_s=dt,
            decode_s=decode_s,
            overhead_cpu_s=max(0.0, time.thread_time() - c0 - decode_cpu),
            sample_s=t3 - t2,
            logprob_s=t4 - t3,
        )

    def _swap(self) -> None:
        pending, self._draining = self._draining, []
        path, profiles = pending[-1][0], pending[-1][1]
        try:
            new = self._swap_fn(self.m, path, profiles)
        except BaseException as exc:
            err = exc if isinstance(exc, ExplainstreamError) else ModelLoadError(str(exc))
            for *_, fut, loop in pending:
                call_soon(loop, set_future, fut, None, err)
            if self.m is None or self.m.freed:
                raise  # the old model is gone too: nothing can be served
            return
        self.attach(new)
        self._c.reloads += 1
        for *_, fut, loop in pending:
            call_soon(loop, set_future, fut, None, None)

    def _shutdown(self) -> None:
        err = EngineError("llama engine stopped")
        while True:
            try:
                kind, payload = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                payload.resolve(None, err)
            elif kind == "reload":
                self._draining.append(payload)
        self.t.fail_all(err)
        for *_, fut, loop in self._draining:
            call_soon(loop, set_future, fut, None, err)
        self._draining.clear()
        if self.m is not None:
            self.m.free()
        self._c.busy_slots = 0


def _admitted(slot: Slot) -> int:
    return slot.admitted


def _out_idx(slot: Slot) -> int:
    return slot.out_idx
