"""The ``sequential`` engine: the old service's design, kept as the benchmark baseline.

One high-level ``llama_cpp.Llama`` runs ``create_chat_completion`` for one request at a time
behind an asyncio lock (in a worker thread). It uses the same prompt profiles and context
rendering as the ``llama`` engine. ``confidence_score`` is None: llama-cpp-python only
returns logprobs with ``logits_all=True``, which computes full-vocabulary logits for every
prompt token and would slow the baseline down.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from consumer.config import Settings
from consumer.engines import model as model_files
from consumer.engines.backend import llama_backend, require_gpu
from consumer.engines.base import (
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    warmup_requests,
)
from consumer.engines.prompts import build_messages, list_profiles, system_prompt
from schemas.errors import DeadlineExceeded, EngineError, ModelLoadError, RequestRejected

_T = TypeVar("_T")

__all__ = ["SequentialEngine"]


class SequentialEngine:
    """One request at a time through ``Llama.create_chat_completion``."""

    name = "sequential"
    # llama-cpp-python applies a grammar to the whole vocabulary at every token (measured
    # 0.55x tokens/s on the bundled model): only repairs are constrained.
    cheap_grammar = False

    @property
    def backend(self) -> str:
        """llama.cpp's backend as loaded: ``cpu``, ``cuda`` ... (see consumer.engines.backend)."""
        return llama_backend().name

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model_path = model_files.resolve_model_path(settings.model_path)
        self._llm: Any = None
        self._info: ModelInfo | None = None
        self._eog: list[int] = []
        self._lock = asyncio.Lock()
        self._n_ctx = model_files.seq_budget(settings)
        self._c_completed = 0
        self._c_failed = 0
        self._c_generated = 0
        self._busy_s = 0.0
        self._in_flight = 0
        self._waiting = 0
        self._worker: ThreadPoolExecutor | None = None

    @property
    def slots(self) -> int:
        """Concurrent generate calls accepted (they queue on the lock)."""
        return self._settings.max_concurrent_requests

    def model_info(self) -> ModelInfo:
        """Identity of the loaded model."""
        if self._info is None:
            raise EngineError("sequential engine not started", retriable=False)
        return self._info

    async def start(self) -> None:
        """Load the model (idempotent)."""
        async with self._lock:
            if self._llm is None:
                self._llm, self._info, self._eog = await self._call(self._load, self._model_path)

    async def stop(self) -> None:
        """Release the model."""
        async with self._lock:
            llm, self._llm = self._llm, None
            if llm is not None:
                await self._call(llm.close)
            worker, self._worker = self._worker, None
            if worker is not None:
                # Its thread ends, and with it the OpenMP team llama.cpp kept for it.
                await asyncio.to_thread(worker.shutdown, True)

    def _call(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run ``fn`` on this engine's one llama.cpp thread.

        Every load, generation and close runs on the same thread: llama.cpp's OpenMP build
        keeps a worker team per calling thread, and teams left docked on other threads make
        libgomp throttle the active team's barrier spin (see the llama engine's loop thread).
        """
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="sequential-llama")
        return asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _load(self, path: str) -> tuple[Any, ModelInfo, list[int]]:
        model_files.validate_model_file(path)
        model_files.init_llama_backend()
        require_gpu(self._settings.n_gpu_layers, llama_backend())
        from llama_cpp import Llama

        s = self._settings
        threads = s.n_threads or (os.cpu_count() or 1)
        kv = model_files.ggml_type(s.kv_cache_type)
        try:
            llm = Llama(
                model_path=path,
                n_ctx=self._n_ctx,
                n_batch=s.n_batch,
                n_ubatch=s.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=model_files.gpu_layers_param(s.n_gpu_layers),
                type_k=kv,
                type_v=kv,
                flash_attn=model_files.flash_attn_type(s) != 0,  # the bool API has no "auto"
                verbose=s.debug,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"failed to load model {path}: {exc}") from exc
        meta = {str(k): str(v) for k, v in llm.metadata.items()}
        info = model_files.model_info(meta, path, s, self._n_ctx)
        import llama_cpp

        vocab = llm._model.vocab
        eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        return llm, info, eog

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Wait for the lock, then run one chat completion in a thread."""
        system_prompt(request.prompt_profile)
        if request.max_tokens > self._settings.max_tokens_limit:
            raise RequestRejected(
                f"max_tokens {request.max_tokens} exceeds the limit "
                f"{self._settings.max_tokens_limit}"
            )
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        handed_to_thread = False
        try:
            if self._llm is None:
                raise EngineError("sequential engine not started")
            remaining = request.remaining_s()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"request {request.request_id} expired in queue")
            self._in_flight = 1
            cancel = threading.Event()
            running = self._call(self._run, self._llm, request, cancel)
            # The lock belongs to the worker thread from here: only its end releases it, so a
            # cancelled caller never lets the next request (or reload/stop) onto a busy Llama.
            running.add_done_callback(self._thread_done)
            handed_to_thread = True
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                cancel.set()  # the thread stops at its next token
                raise
        finally:
            if not handed_to_thread:
                self._in_flight = 0
                self._lock.release()

    def _thread_done(self, running: asyncio.Future[GenerationResult]) -> None:
        if not running.cancelled():
            running.exception()  # retrieved here when the caller was cancelled
        self._in_flight = 0
        self._lock.release()

    def alive(self) -> bool:
        """Always True: the one worker thread outlives a failed generation, which reports
        its failure as EngineError."""
        return True

    def _run(
        self, llm: Any, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> GenerationResult:
        from llama_cpp import LlamaGrammar, LogitsProcessorList

        messages = build_messages(request.prompt_profile, request.context)
        deadline = request.deadline_monotonic
        expired = False
        eog = np.asarray(self._eog, dtype=np.intp)
        eos = llm.token_eos()

        # One processor for both: llama-cpp-python applies its own logit_bias after ours,
        # which would undo the forced end-of-generation at the deadline.
        def process(_ids: Any, scores: Any) -> Any:
            nonlocal expired
            stop = cancel is not None and cancel.is_set()
            if stop or (deadline is not None and time.monotonic() >= deadline):
                expired = True
                scores[:] = -np.inf
                scores[eos] = 0.0
            elif request.ignore_eos:
                scores[eog] = -np.inf
            return scores

        processors = LogitsProcessorList([process])
        t0 = time.monotonic()
        try:
            # llama-cpp-python applies a grammar to the whole vocabulary at every token.
            grammar = (
                LlamaGrammar.from_string(request.grammar, verbose=False)
                if request.grammar
                else None
            )
            out = llm.create_chat_completion(
                grammar=grammar,
                messages=messages,
                max_tokens=request.max_tokens,
                temperature=max(request.temperature, 0.0),
                top_k=40,
                top_p=0.95,
                min_p=0.05,
                seed=request.seed,
                logits_processor=processors,
            )
        except Exception as exc:
            self._c_failed += 1
            raise EngineError(f"generation failed: {exc}") from exc
        dt = time.monotonic() - t0
        usage = out["usage"]
        choice = out["choices"][0]
        text = (choice["message"].get("content") or "").strip()
        reason = "deadline" if expired else (choice.get("finish_reason") or "stop")
        if expired and not usage["completion_tokens"]:
            raise DeadlineExceeded(f"request {request.request_id} hit its deadline")
        self._c_completed += 1
        self._c_generated += usage["completion_tokens"]
        self._busy_s += dt
        return GenerationResult(
            text=text,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            finish_reason=reason,
            confidence_score=None,
            processing_time_ms=dt * 1000.0,
            compute_ms=dt * 1000.0,  # one request at a time: the whole run is its own
        )

    async def warmup(self) -> None:
        """One tiny completion per profile."""
        for request in warmup_requests(list_profiles()):
            await self.generate(request)

    async def reload(self, model_path: str | None = None) -> None:
        """Wait for the running request, swap the model; queued requests keep waiting."""
        path = model_files.resolve_model_path(model_path or self._model_path)
        model_files.validate_model_file(path)
        async with self._lock:
            loaded = await self._call(self._load, path)
            old, (self._llm, self._info, self._eog) = self._llm, loaded
            self._model_path = path
            if old is not None:
                await self._call(old.close)

    def stats(self) -> dict[str, Any]:
        """Counters for /status and /admin/stats."""
        return {
            "engine": self.name,
            "slots": self.slots,
            "slots_busy": self._in_flight,
            "slots_free": self.slots - self._in_flight,
            "waiting": self._waiting,
            "tokens_generated": self._c_generated,
            "tokens_per_busy_s": self._c_generated / self._busy_s if self._busy_s else 0.0,
            "requests_completed": self._c_completed,
            "requests_failed": self._c_failed,
            "n_ctx": self._n_ctx,
            "model_path": self._model_path,
        }
