"""The ``llama`` engine: continuous batching on one model and one llama.cpp context.

One dedicated thread owns the model, the context and every sequence ("slot"), like
llama.cpp server's ``update_slots``. Each pass it first *decides* (expire, admit by
priority, maybe preempt), then builds one ``llama_batch``: one token per generating
sequence, then prompt chunks of newly admitted sequences up to ``n_batch``, then calls
``llama_decode`` once and samples every sequence that produced logits with its own C-side
``llama_sampler`` chain. asyncio submits work through a thread-safe queue; results come back
with ``loop.call_soon_threadsafe``.

The KV cache is unified (``kv_unified``): the system-prompt prefix of each profile is
evaluated once into a reserved sequence id and ``llama_memory_seq_cp`` shares its cells with
each new sequence instead of re-evaluating it.

``confidence_score`` is ``exp(mean log p(token))`` over the generated tokens, where
``log p`` is the log-softmax of the model's raw logits (temperature 1, before top-k/top-p)
at the sampled token. It is computed once per step for all sampled rows together with numpy
on the context's logits buffer (max, exp, sum into preallocated arrays), which costs a few
hundred microseconds per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import logging
import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consumer.config import Settings
from consumer.engines import model as model_files
from consumer.engines.base import (
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    warmup_requests,
)
from consumer.engines.prompts import ChatPrompter, EncodedPrompt, list_profiles, system_prompt
from schemas.errors import (
    DeadlineExceeded,
    EngineError,
    ExplainstreamError,
    ModelLoadError,
    RequestRejected,
)

__all__ = ["LlamaEngine", "choose_admissions", "choose_preemption"]

log = logging.getLogger(__name__)

LLAMA_MAX_SEQ = 256  # llama.cpp's compile-time LLAMA_MAX_SEQ
PREEMPT_PRIORITY = 0  # only urgent requests preempt
PREEMPTABLE_FROM = 2  # ... and only normal/low ones are preempted
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05


# ---------------------------------------------------------------------------------------
# Pure policy


def choose_admissions(free_slots: int, waiting: list[tuple[int, int, Any]], draining: bool) -> int:
    """How many of the heap's best waiting entries to admit now."""
    if draining:
        return 0
    return min(free_slots, len(waiting))


def choose_preemption(
    waiting_priority: int | None, running: list[tuple[int, int, int]]
) -> int | None:
    """Index (into ``running``) of the sequence to preempt for the best waiting request.

    ``running`` holds ``(priority, order, generated_tokens)`` per busy slot, only when all
    slots are busy. An urgent request may take the slot of the least urgent, most recently
    submitted normal/low sequence.
    """
    if waiting_priority is None or waiting_priority > PREEMPT_PRIORITY or not running:
        return None
    best: int | None = None
    for i, (prio, order, _) in enumerate(running):
        if prio < PREEMPTABLE_FROM or prio <= waiting_priority:
            continue
        if best is None or (prio, order) > running[best][:2]:
            best = i
    return best


# ---------------------------------------------------------------------------------------
# State owned by the loop thread


@dataclass(eq=False, slots=True)
class _Job:
    request: GenerationRequest
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    order: int
    cancelled: bool = False
    # Generation state; survives preemption.
    prompt: list[int] | None = None
    prefix_len: int = 0
    generated: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    logprob_sum: float = 0.0
    n_logprob: int = 0
    sampler: Any = None
    started: float = 0.0
    preemptions: int = 0
    stops: tuple[bytes, ...] = ()
    trace: list[float] | None = None


@dataclass(eq=False, slots=True)
class _Slot:
    seq_id: int
    job: _Job | None = None
    tokens: np.ndarray | None = None  # tokens still to prefill (np.int32)
    fed: int = 0  # how many of ``tokens`` are in the KV cache
    n_past: int = 0  # next position
    last: int = -1  # sampled token not yet decoded (generating phase)
    out_idx: int = -1  # batch index whose logits this slot samples this step
    admitted: int = 0


@dataclass(slots=True)
class _Model:
    path: str
    model: Any
    ctx: Any
    mem: Any
    vocab: Any
    n_vocab: int
    n_ctx: int
    info: ModelInfo
    prompter: ChatPrompter
    eog_ids: list[int]
    prefix_seq: dict[str, tuple[int, int]]  # profile -> (seq id, n tokens)


class LlamaEngine:
    """Continuous-batching engine; see the module docstring."""

    name = "llama"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._n_slots = settings.max_concurrent_requests
        self._n_batch = max(settings.n_batch, self._n_slots)
        self._n_threads = settings.n_threads or (os.cpu_count() or 1)
        self._seq_budget = model_files.seq_budget(settings)
        self._model_path = model_files.resolve_model_path(settings.model_path)
        self._m: _Model | None = None
        #: Extra llama_context_params fields (experiments, benchmarks).
        self.context_overrides: dict[str, Any] = {}
        #: When a dict, request_id -> (generated token ids, their log-probabilities) is
        #: recorded for every completed request (tests measure numeric divergence with it).
        self.token_trace: dict[str, tuple[list[int], list[float]]] | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = asyncio.Lock()
        self._order = itertools.count()
        self._stopping = False
        # Counters: written by the loop thread only, read anywhere.
        self._c_steps = 0
        self._c_batch_tokens = 0
        self._c_generating = 0
        self._c_generated = 0
        self._c_prompt = 0
        self._c_prefix_hits = 0
        self._c_prefix_tokens = 0
        self._c_completed = 0
        self._c_failed = 0
        self._c_preempted = 0
        self._c_reloads = 0
        self._busy_s = 0.0
        self._decode_s = 0.0
        self._sample_s = 0.0
        self._logprob_s = 0.0
        self._tps_ema = 0.0
        self._busy_slots = 0
        self._waiting_n = 0
        # Loop-thread state.
        self._slots = [_Slot(seq_id=i) for i in range(self._n_slots)]
        self._waiting: list[tuple[int, int, _Job]] = []
        self._draining: list[tuple[str, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._alloc_batch()

    # ----------------------------------------------------------------------------- API

    @property
    def slots(self) -> int:
        """Concurrent sequences in the batch (MAX_CONCURRENT_REQUESTS)."""
        return self._n_slots

    def model_info(self) -> ModelInfo:
        """Identity of the loaded model."""
        if self._m is None:
            raise EngineError("llama engine not started", retriable=False)
        return self._m.info

    async def start(self) -> None:
        """Load model and context, start the loop thread (idempotent)."""
        async with self._start_lock:
            if self._thread is not None:
                return
            self._m = await asyncio.to_thread(self._load, self._model_path)
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop the loop; pending generations fail with EngineError; free the model."""
        async with self._start_lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._inbox.put(("stop", None))
            await asyncio.to_thread(thread.join)
            self._thread = None

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue one request and wait for its result (see GenerationRequest)."""
        system_prompt(request.prompt_profile)  # RequestRejected for unknown profiles
        if request.max_tokens > self._settings.max_tokens_limit:
            raise RequestRejected(
                f"max_tokens {request.max_tokens} exceeds the limit "
                f"{self._settings.max_tokens_limit}"
            )
        if request.max_tokens < 1:
            raise RequestRejected("max_tokens must be at least 1")
        if self._thread is None or self._stopping:
            raise EngineError("llama engine not started")
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop, next(self._order))
        self._inbox.put(("submit", job))
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._inbox.put(("poke", None))
            raise

    async def warmup(self) -> None:
        """Generate a few tokens for every profile (exercises prefix KV and sampling)."""
        await asyncio.gather(*(self.generate(r) for r in warmup_requests(list_profiles())))

    async def reload(self, model_path: str | None = None) -> None:
        """Stop admitting, let in-flight sequences finish, swap model+context, resume.

        Waiting requests stay queued and run on the new model. When the new model fails to
        load the old one keeps serving and ModelLoadError is raised.
        """
        if self._thread is None:
            raise EngineError("llama engine not started", retriable=False)
        path = model_files.resolve_model_path(model_path or self._model_path)
        model_files.validate_model_file(path)
        await asyncio.to_thread(model_files.file_sha256, path)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._inbox.put(("reload", (path, done, loop)))
        await done

    def render_prompt(self, profile: str, context: dict[str, Any]) -> tuple[str, EncodedPrompt]:
        """The prompt text and token ids a request would get (debugging, tests).

        Uses the loaded model's tokenizer; do not call it while a reload is in progress.
        """
        m = self._m
        if m is None:
            raise EngineError("llama engine not started", retriable=False)
        return m.prompter.render(profile, context), m.prompter.encode(profile, context)

    def stats(self) -> dict[str, Any]:
        """Counters for /status and /admin/stats."""
        steps = self._c_steps
        m = self._m
        return {
            "engine": self.name,
            "slots": self._n_slots,
            "slots_busy": self._busy_slots,
            "slots_free": self._n_slots - self._busy_slots,
            "waiting": self._waiting_n,
            "steps": steps,
            "mean_batch_tokens": self._c_batch_tokens / steps if steps else 0.0,
            "mean_batch_size": self._c_generating / steps if steps else 0.0,
            "tokens_generated": self._c_generated,
            "prompt_tokens": self._c_prompt,
            "tokens_per_s": round(self._tps_ema, 2),
            "tokens_per_busy_s": self._c_generated / self._busy_s if self._busy_s else 0.0,
            "decode_s": round(self._decode_s, 3),
            "sample_s": round(self._sample_s, 3),
            "logprob_s": round(self._logprob_s, 3),
            "busy_s": round(self._busy_s, 3),
            "prefix_cache_hits": self._c_prefix_hits,
            "prefix_tokens_reused": self._c_prefix_tokens,
            "requests_completed": self._c_completed,
            "requests_failed": self._c_failed,
            "preemptions": self._c_preempted,
            "reloads": self._c_reloads,
            "n_ctx": m.n_ctx if m else 0,
            "n_batch": self._n_batch,
            "n_threads": self._n_threads,
            "model_path": m.path if m else self._model_path,
        }

    # ------------------------------------------------------------------- model lifecycle

    def _load(self, path: str) -> _Model:
        import llama_cpp

        if not self._settings.debug:
            from llama_cpp import _logger

            _logger.set_verbose(False)
        model = model_files.load_model(path, self._settings.n_gpu_layers)
        ctx = None
        try:
            meta = model_files.model_metadata(model)
            vocab = llama_cpp.llama_model_get_vocab(model)
            n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            template = meta.get("tokenizer.chat_template")
            if not template:
                raise ModelLoadError(f"model has no tokenizer.chat_template: {path}")
            bos = _token_text(vocab, llama_cpp.llama_vocab_bos(vocab))
            eos = _token_text(vocab, llama_cpp.llama_vocab_eos(vocab))
            add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))

            def tokenize(text: str) -> list[int]:
                data = text.encode("utf-8")
                special = add_bos and not (bos and text.startswith(bos))
                return _tokenize(vocab, data, special)

            prompter = ChatPrompter(template, bos_token=bos, eos_token=eos, tokenize=tokenize)
            prefixes = {p: prompter.prefix(p)[1] for p in list_profiles()}
            use_prefix = self._n_slots + len(prefixes) <= LLAMA_MAX_SEQ
            n_ctx = model_files.context_size(self._settings)
            if use_prefix:
                n_ctx += sum(len(t) for t in prefixes.values())
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = n_ctx
            params.n_batch = self._n_batch
            params.n_ubatch = self._n_batch
            params.n_seq_max = self._n_slots + (len(prefixes) if use_prefix else 0)
            # llama.cpp reserves logits rows for max(outputs, n_seq_max) and asserts that
            # this fits n_outputs_max (which defaults to n_batch).
            params.n_outputs_max = max(self._n_batch, params.n_seq_max)
            params.n_threads = self._n_threads
            params.n_threads_batch = self._n_threads
            params.type_k = model_files.ggml_type(self._settings.kv_cache_type)
            params.type_v = model_files.ggml_type(self._settings.kv_cache_type)
            params.kv_unified = True
            params.no_perf = True
            for key, value in self.context_overrides.items():
                setattr(params, key, value)
            ctx = llama_cpp.llama_init_from_model(model, params)
            if not ctx:
                raise ModelLoadError(
                    f"failed to create a llama.cpp context (n_ctx={n_ctx}, "
                    f"kv_cache_type={self._settings.kv_cache_type}) for {path}"
                )
            mem = llama_cpp.llama_get_memory(ctx)
            eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
            m = _Model(
                path=path,
                model=model,
                ctx=ctx,
                mem=mem,
                vocab=vocab,
                n_vocab=n_vocab,
                n_ctx=llama_cpp.llama_n_ctx(ctx),
                info=model_files.model_info(meta, path, self._settings, n_ctx),
                prompter=prompter,
                eog_ids=eog,
                prefix_seq={},
            )
            if use_prefix:
                self._eval_prefixes(m, prefixes)
            self._alloc_logits(m)
            return m
        except BaseException:
            if ctx:
                llama_cpp.llama_free(ctx)
            llama_cpp.llama_model_free(model)
            raise

    def _eval_prefixes(self, m: _Model, prefixes: dict[str, list[int]]) -> None:
        import llama_cpp

        for i, (profile, toks) in enumerate(sorted(prefixes.items())):
            if not toks or len(toks) > self._n_batch:
                continue
            seq = self._n_slots + i
            n = len(toks)
            self._b_token[:n] = toks
            self._b_pos[:n] = self._ramp[:n]
            self._b_seq[:n] = seq
            self._b_logits[:n] = 0
            self._b_logits[n - 1] = 1
            self._batch.n_tokens = n
            rc = llama_cpp.llama_decode(m.ctx, self._batch)
            if rc != 0:
                raise ModelLoadError(f"evaluating the {profile!r} prompt prefix failed ({rc})")
            m.prefix_seq[profile] = (seq, n)

    def _free(self, m: _Model) -> None:
        import llama_cpp

        llama_cpp.llama_free(m.ctx)
        llama_cpp.llama_model_free(m.model)

    def _alloc_batch(self) -> None:
        import llama_cpp

        n = self._n_batch
        self._b_token = np.zeros(n, dtype=np.int32)
        self._b_pos = np.zeros(n, dtype=np.int32)
        self._b_nseq = np.ones(n, dtype=np.int32)
        self._b_seq = np.zeros(n, dtype=np.int32)
        self._b_logits = np.zeros(n, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self._b_seq.ctypes.data
        self._b_seq_ptrs = (i32p * n)(*(ctypes.cast(base + 4 * i, i32p) for i in range(n)))
        b: Any = llama_cpp.llama_batch()
        b.n_tokens = 0
        b.token = self._b_token.ctypes.data_as(i32p)
        b.embd = None
        b.pos = self._b_pos.ctypes.data_as(i32p)
        b.n_seq_id = self._b_nseq.ctypes.data_as(i32p)
        b.seq_id = ctypes.cast(self._b_seq_ptrs, ctypes.POINTER(i32p))
        b.logits = self._b_logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = b
        self._ramp = np.arange(max(self._seq_budget, n) + 8192, dtype=np.int32)
        self._out_tok = np.zeros(self._n_slots, dtype=np.int64)
        self._out_max = np.zeros(self._n_slots, dtype=np.float32)
        self._out_sum = np.zeros(self._n_slots, dtype=np.float32)
        self._out_rows = np.arange(self._n_slots, dtype=np.int64)

    def _alloc_logits(self, m: _Model) -> None:
        self._scratch = np.empty((self._n_slots, m.n_vocab), dtype=np.float32)
        self._logits_addr = 0
        self._logits_view: np.ndarray = self._scratch
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}

    # --------------------------------------------------------------------------- loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not strand awaiting callers
            log.exception("llama engine loop crashed")
            err = EngineError(f"llama engine loop crashed: {exc!r}")
            for slot in self._slots:
                if slot.job is not None:
                    self._finish_error(slot, err)
            for _, _, job in self._waiting:
                self._resolve(job, None, err)
            self._waiting.clear()
        finally:
            self._stopping = True
            self._shutdown()

    def _shutdown(self) -> None:
        err = EngineError("llama engine stopped")
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                self._resolve(payload, None, err)
            elif kind == "reload":
                _, fut, loop = payload
                _call_soon(loop, _set_future, fut, None, err)
        for slot in self._slots:
            if slot.job is not None:
                self._finish_error(slot, err)
        for _, _, job in self._waiting:
            self._resolve(job, None, err)
        self._waiting.clear()
        for _, fut, loop in self._draining:
            _call_soon(loop, _set_future, fut, None, err)
        self._draining.clear()
        if self._m is not None:
            self._free(self._m)
            self._m = None
        self._busy_slots = 0
        self._waiting_n = 0

    def _loop(self) -> None:
        while True:
            busy = self._busy_slots > 0
            idle = not busy and not (self._waiting and not self._draining)
            if not self._pump_inbox(block=idle and not self._draining):
                return
            if self._draining and not any(s.job for s in self._slots):
                self._swap_model()
                continue
            now = time.monotonic()
            self._expire_waiting(now)
            self._admit(now)
            if self._busy_slots == 0:
                continue
            self._step()

    def _pump_inbox(self, block: bool) -> bool:
        first = True
        while True:
            try:
                if block and first:
                    kind, payload = self._inbox.get()
                else:
                    kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return True
            first = False
            if kind == "submit":
                job: _Job = payload
                heapq.heappush(self._waiting, (job.request.priority, job.order, job))
            elif kind == "reload":
                self._draining.append(payload)
            elif kind == "stop":
                return False
            self._waiting_n = len(self._waiting)

    def _expire_waiting(self, now: float) -> None:
        if not self._waiting:
            return
        keep = []
        changed = False
        for entry in self._waiting:
            job = entry[2]
            req = job.request
            if job.cancelled or job.future.done():
                changed = True
                self._free_sampler(job)
            elif req.deadline_monotonic is not None and now >= req.deadline_monotonic:
                changed = True
                if job.generated:
                    self._complete(job, "deadline", now)
                else:
                    self._resolve(
                        job, None, DeadlineExceeded(f"request {req.request_id} expired in queue")
                    )
            else:
                keep.append(entry)
        if changed:
            heapq.heapify(keep)
            self._waiting = keep
            self._waiting_n = len(keep)

    def _admit(self, now: float) -> None:
        free = [s for s in self._slots if s.job is None]
        if not free and self._waiting and not self._draining:
            self._maybe_preempt()
            free = [s for s in self._slots if s.job is None]
        n = choose_admissions(len(free), self._waiting, bool(self._draining))
        for slot in free[:n]:
            while self._waiting:
                _, _, job = heapq.heappop(self._waiting)
                if self._start_job(slot, job, now):
                    break
        self._waiting_n = len(self._waiting)

    def _maybe_preempt(self) -> None:
        running = [s for s in self._slots if s.job is not None]
        top = self._waiting[0][0] if self._waiting else None
        pick = choose_preemption(
            top,
            [(s.job.request.priority, s.job.order, len(s.job.generated)) for s in running if s.job],
        )
        if pick is None:
            return
        slot = running[pick]
        job = slot.job
        assert job is not None
        job.preemptions += 1
        self._c_preempted += 1
        self._release(slot)
        heapq.heappush(self._waiting, (job.request.priority, job.order, job))

    def _start_job(self, slot: _Slot, job: _Job, now: float) -> bool:
        import llama_cpp

        m = self._m
        assert m is not None
        req = job.request
        if job.cancelled or job.future.done():
            self._free_sampler(job)
            return False
        try:
            if job.prompt is None:
                enc = m.prompter.encode(req.prompt_profile, req.context)
                budget = self._seq_budget
                if len(enc.tokens) + req.max_tokens > budget:
                    raise RequestRejected(
                        f"prompt ({len(enc.tokens)} tokens) + max_tokens ({req.max_tokens}) "
                        f"exceeds the per-sequence budget of {budget} tokens"
                    )
                job.prompt = enc.tokens
                job.prefix_len = enc.prefix_len
                job.stops = tuple(s.encode() for s in m.prompter.stop if s)
                job.sampler = self._make_sampler(m, req)
                job.started = now
                if self.token_trace is not None:
                    job.trace = []
        except ExplainstreamError as exc:
            self._resolve(job, None, exc)
            return False
        except Exception as exc:
            self._resolve(job, None, EngineError(f"prompt preparation failed: {exc}"))
            return False
        # After preemption the generated tokens are re-evaluated too (the sampler's state is
        # kept), so the sequence continues exactly where it stopped.
        tokens = job.prompt + job.generated
        seq = slot.seq_id
        llama_cpp.llama_memory_seq_rm(m.mem, seq, -1, -1)
        start = 0
        prefix = m.prefix_seq.get(req.prompt_profile)
        if prefix is not None and job.prefix_len == prefix[1]:
            llama_cpp.llama_memory_seq_cp(m.mem, prefix[0], seq, -1, -1)
            start = prefix[1]
            self._c_prefix_hits += 1
            self._c_prefix_tokens += start
        slot.job = job
        slot.tokens = np.asarray(tokens, dtype=np.int32)
        slot.fed = start
        slot.n_past = start
        slot.last = -1
        slot.out_idx = -1
        slot.admitted = job.order
        self._busy_slots += 1
        if not job.generated:
            self._c_prompt += len(tokens)
        return True

    def _make_sampler(self, m: _Model, req: GenerationRequest) -> Any:
        import llama_cpp

        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if req.ignore_eos and m.eog_ids:
            arr: Any = (llama_cpp.llama_logit_bias * len(m.eog_ids))()
            for i, t in enumerate(m.eog_ids):
                arr[i].token = t
                arr[i].bias = -math.inf
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_logit_bias(m.n_vocab, len(m.eog_ids), arr)
            )
        if req.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            seed = req.seed if req.seed is not None else random.getrandbits(32)
            add = llama_cpp.llama_sampler_chain_add
            add(chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
            add(chain, llama_cpp.llama_sampler_init_top_p(TOP_P, 1))
            add(chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(req.temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _free_sampler(self, job: _Job) -> None:
        if job.sampler is not None:
            import llama_cpp

            llama_cpp.llama_sampler_free(job.sampler)
            job.sampler = None

    def _step(self) -> None:
        import llama_cpp

        m = self._m
        assert m is not None
        t0 = time.monotonic()
        tok, pos, seqs, logits = self._b_token, self._b_pos, self._b_seq, self._b_logits
        n = 0
        n_gen = 0
        active: list[_Slot] = []
        # Decide: drop cancelled jobs, then one token per generating sequence ...
        for slot in self._slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled or job.future.done():
                self._release(slot)
                self._free_sampler(job)
                continue
            slot.out_idx = -1
            if slot.last >= 0:
                tok[n] = slot.last
                pos[n] = slot.n_past
                seqs[n] = slot.seq_id
                logits[n] = 1
                slot.out_idx = n
                n += 1
                n_gen += 1
                active.append(slot)
        # ... then prompt chunks of admitted sequences, oldest admission first.
        prefilling = sorted(
            (s for s in self._slots if s.job is not None and s.last < 0), key=_admitted
        )
        for slot in prefilling:
            if n >= self._n_batch:
                break
            assert slot.tokens is not None
            left = len(slot.tokens) - slot.fed
            take = min(left, self._n_batch - n)
            tok[n : n + take] = slot.tokens[slot.fed : slot.fed + take]
            pos[n : n + take] = self._ramp[slot.n_past : slot.n_past + take]
            seqs[n : n + take] = slot.seq_id
            logits[n : n + take] = 0
            slot.fed += take
            slot.n_past += take
            n += take
            if slot.fed == len(slot.tokens):
                logits[n - 1] = 1
                slot.out_idx = n - 1
                active.append(slot)
        if n == 0:
            return
        # Act: one decode for everybody.
        self._batch.n_tokens = n
        t1 = time.monotonic()
        rc = llama_cpp.llama_decode(m.ctx, self._batch)
        t2 = time.monotonic()
        self._decode_s += t2 - t1
        if rc != 0:
            err = EngineError(f"llama_decode failed ({rc}) with {n} tokens")
            for slot in self._slots:
                if slot.job is not None:
                    self._finish_error(slot, err)
            return
        # Sample in C, in batch order (outputs are ordered by batch index).
        active.sort(key=_out_idx)
        n_out = len(active)
        out_tok = self._out_tok
        for i, slot in enumerate(active):
            assert slot.job is not None
            out_tok[i] = llama_cpp.llama_sampler_sample(slot.job.sampler, m.ctx, slot.out_idx)
        t3 = time.monotonic()
        lps = self._logprobs(m, n_out)
        now = time.monotonic()
        self._sample_s += t3 - t2
        self._logprob_s += now - t3
        produced = 0
        for i, slot in enumerate(active):
            job = slot.job
            assert job is not None
            if slot.last >= 0:
                slot.n_past += 1
            t = int(out_tok[i])
            req = job.request
            if not req.ignore_eos and llama_cpp.llama_vocab_is_eog(m.vocab, t):
                self._complete_slot(slot, "stop", now)
                continue
            job.generated.append(t)
            if lps is not None:
                lp = float(lps[i])
                job.logprob_sum += lp
                job.n_logprob += 1
                if job.trace is not None:
                    job.trace.append(lp)
            produced += 1
            piece = self._pieces.get(t)
            if piece is None:
                piece = self._piece(m, t)
            job.text += piece
            slot.last = t
            if job.stops and not req.ignore_eos and self._hit_stop(job, len(piece)):
                self._complete_slot(slot, "stop", now)
            elif len(job.generated) >= req.max_tokens or slot.n_past + 1 >= self._seq_budget:
                self._complete_slot(slot, "length", now)
            elif req.deadline_monotonic is not None and now >= req.deadline_monotonic:
                self._complete_slot(slot, "deadline", now)
        # Sequences still prefilling can also run out of time.
        for slot in self._slots:
            job = slot.job
            if job is None or slot.last >= 0:
                continue
            dl = job.request.deadline_monotonic
            if dl is not None and now >= dl:
                if job.generated:
                    self._complete_slot(slot, "deadline", now)
                else:
                    self._release(slot)
                    self._free_sampler(job)
                    self._resolve(
                        job,
                        None,
                        DeadlineExceeded(f"request {job.request.request_id} expired in prefill"),
                    )
        dt = now - t0
        self._c_steps += 1
        self._c_batch_tokens += n
        self._c_generating += n_gen
        self._c_generated += produced
        self._busy_s += dt
        if dt > 0:
            self._tps_ema = 0.9 * self._tps_ema + 0.1 * (produced / dt)

    def _logprobs(self, m: _Model, n_out: int) -> np.ndarray | None:
        import llama_cpp

        if n_out == 0:
            return None
        ptr = llama_cpp.llama_get_logits(m.ctx)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if not addr:
            return None
        if addr != self._logits_addr:
            self._logits_view = np.ctypeslib.as_array(
                ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)),
                shape=(self._n_slots, m.n_vocab),
            )
            self._logits_addr = addr
        rows = self._logits_view[:n_out]
        buf = self._scratch[:n_out]
        mx = self._out_max[:n_out]
        sm = self._out_sum[:n_out]
        np.max(rows, axis=1, out=mx)
        np.subtract(rows, mx[:, None], out=buf)
        np.exp(buf, out=buf)
        np.sum(buf, axis=1, out=sm)
        picked = rows[self._out_rows[:n_out], self._out_tok[:n_out]]
        result: np.ndarray = picked - mx - np.log(sm)
        return result

    def _piece(self, m: _Model, token: int) -> bytes:
        import llama_cpp

        buf = self._piece_buf
        k = llama_cpp.llama_token_to_piece(m.vocab, token, buf, len(buf), 0, False)
        piece = buf.raw[:k] if k > 0 else b""
        self._pieces[token] = piece
        return piece

    @staticmethod
    def _hit_stop(job: _Job, piece_len: int) -> bool:
        text = job.text
        for stop in job.stops:
            start = max(0, len(text) - piece_len - len(stop))
            idx = text.find(stop, start)
            if idx >= 0:
                del text[idx:]
                return True
        return False

    # ---------------------------------------------------------------------- completion

    def _release(self, slot: _Slot) -> None:
        import llama_cpp

        if slot.job is None:
            return
        if self._m is not None:
            llama_cpp.llama_memory_seq_rm(self._m.mem, slot.seq_id, -1, -1)
        slot.job = None
        slot.tokens = None
        slot.last = -1
        slot.out_idx = -1
        self._busy_slots -= 1

    def _complete_slot(self, slot: _Slot, reason: str, now: float) -> None:
        job = slot.job
        assert job is not None
        self._release(slot)
        self._complete(job, reason, now)

    def _complete(self, job: _Job, reason: str, now: float) -> None:
        self._free_sampler(job)
        n = job.n_logprob
        conf = math.exp(job.logprob_sum / n) if n else None
        result = GenerationResult(
            text=job.text.decode("utf-8", "ignore").strip(),
            prompt_tokens=len(job.prompt or ()),
            completion_tokens=len(job.generated),
            finish_reason=reason,
            confidence_score=conf,
            processing_time_ms=(now - job.started) * 1000.0,
        )
        self._c_completed += 1
        if self.token_trace is not None and job.trace is not None:
            self.token_trace[job.request.request_id] = (list(job.generated), job.trace)
        self._resolve(job, result, None)

    def _finish_error(self, slot: _Slot, err: BaseException) -> None:
        job = slot.job
        assert job is not None
        self._release(slot)
        self._free_sampler(job)
        self._c_failed += 1
        self._resolve(job, None, err)

    def _resolve(
        self, job: _Job, result: GenerationResult | None, err: BaseException | None
    ) -> None:
        _call_soon(job.loop, _set_future, job.future, result, err)

    # -------------------------------------------------------------------------- reload

    def _swap_model(self) -> None:
        pending = self._draining
        self._draining = []
        path = pending[-1][0]
        try:
            new = self._load(path)
        except BaseException as exc:
            err = exc if isinstance(exc, ExplainstreamError) else ModelLoadError(str(exc))
            for _, fut, loop in pending:
                _call_soon(loop, _set_future, fut, None, err)
            self._alloc_logits_safe()
            return
        old = self._m
        self._m = new
        self._model_path = path
        if old is not None:
            self._free(old)
        self._c_reloads += 1
        for _, fut, loop in pending:
            _call_soon(loop, _set_future, fut, None, None)

    def _alloc_logits_safe(self) -> None:
        if self._m is not None:
            self._alloc_logits(self._m)


# ---------------------------------------------------------------------------------------
# Helpers


def _admitted(slot: _Slot) -> int:
    return slot.admitted


def _out_idx(slot: _Slot) -> int:
    return slot.out_idx


def _set_future(fut: asyncio.Future[Any], result: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(result)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed
        loop.call_soon_threadsafe(fn, *args)


def _token_text(vocab: Any, token: int) -> str:
    import llama_cpp

    if token < 0:
        return ""
    raw = llama_cpp.llama_vocab_get_text(vocab, token)
    return raw.decode("utf-8", "replace") if raw else ""


def _tokenize(vocab: Any, data: bytes, add_special: bool) -> list[int]:
    import llama_cpp

    cap = len(data) + 16
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_special, True)
    if n < 0:
        cap = -n
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_special, True)
    if n < 0:
        raise EngineError(f"tokenization failed ({n})")
    return list(buf[:n])
