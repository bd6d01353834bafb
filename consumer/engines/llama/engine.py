"""The llama engine's async facade: settings, lifecycle, prompt preparation, the job bridge.

``generate`` renders the prompt (Jinja) and tokenises it on a preparation thread, so the
decode thread never stalls on it, then hands the job to the batch loop thread
(:mod:`.loop`), which owns the model and context (:mod:`.native`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consumer.config import Settings
from consumer.engines import model as model_files
from consumer.engines import prompts
from consumer.engines.backend import llama_backend
from consumer.engines.base import GenerationRequest, GenerationResult, ModelInfo, warmup_requests
from consumer.engines.llama import plan
from consumer.engines.llama.counters import Counters
from consumer.engines.llama.jobs import Job, call_soon, set_future
from consumer.engines.llama.loop import BatchLoop
from consumer.engines.llama.native import BatchMemory, ContextShape, NativeModel, load_native
from consumer.engines.llama.slots import check_budget
from consumer.engines.prompts import EncodedPrompt
from schemas.errors import EngineError, ExplainstreamError, ModelLoadError, RequestRejected

__all__ = ["LlamaEngine"]

log = logging.getLogger(__name__)


class LlamaEngine:
    """Continuous batching on one model and one llama.cpp context (see the package doc)."""

    name = "llama"
    # The grammar judges the sampled token only (full vocabulary on a refusal): cheap enough
    # to constrain every checked answer (see consumer.runtime.grounded).
    cheap_grammar = True

    @property
    def backend(self) -> str:
        """llama.cpp's backend as loaded: ``cpu``, ``cuda`` ... (see consumer.engines.backend)."""
        return llama_backend().name

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._n_slots = settings.max_concurrent_requests
        self._n_batch = max(settings.n_batch, self._n_slots)
        cpus = model_files.usable_cpus()
        # One count for single-token and batch steps (see plan.default_threads).
        self._n_threads = settings.n_threads or plan.default_threads(cpus)
        self._seq_budget = model_files.seq_budget(settings)
        self._model_path = model_files.resolve_model_path(settings.model_path)
        self._profiles = prompts.load_profiles(settings.prompt_profiles_path)
        #: Extra llama_context_params fields (experiments, benchmarks).
        self.context_overrides: dict[str, Any] = {}
        #: Reload order: None decides from free memory, True/False forces it (tests).
        self.reload_free_first: bool | None = None
        self._counters = Counters()
        self._batch = BatchMemory(
            self._n_batch, self._n_slots, max(self._seq_budget, self._n_batch) + 8192
        )
        self._loop = BatchLoop(
            self._n_slots, self._batch, self._seq_budget, self._counters, self._swap_model
        )
        self._loop.solo_urgent = settings.n_gpu_layers == 0
        self._loop.max_step_s = settings.max_step_ms / 1000.0
        self._thread: threading.Thread | None = None
        self._prep: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self._order = itertools.count()
        self._generation = itertools.count()
        self._stopping = False

    # ------------------------------------------------------------------------- API

    @property
    def slots(self) -> int:
        """Concurrent sequences in the batch (MAX_CONCURRENT_REQUESTS)."""
        return self._n_slots

    @property
    def token_trace(self) -> dict[str, tuple[list[int], list[float]]] | None:
        """When a dict, request_id -> (generated ids, their log-probabilities) of every
        completed request is recorded (tests measure numeric divergence with it)."""
        return self._loop.t.token_trace

    @token_trace.setter
    def token_trace(self, value: dict[str, tuple[list[int], list[float]]] | None) -> None:
        self._loop.t.token_trace = value

    def model_info(self) -> ModelInfo:
        """Identity of the loaded model."""
        m = self._loop.m
        if m is None:
            raise EngineError("llama engine not started", retriable=False)
        return m.info

    def alive(self) -> bool:
        """False once the batch loop thread has died; True before start and while it runs."""
        thread = self._thread
        return thread is None or thread.is_alive()

    async def start(self) -> None:
        """Load model and context, start the loop thread (idempotent)."""
        async with self._start_lock:
            if self._thread is not None:
                return
            prompts.activate(self._profiles)
            loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            thread = threading.Thread(
                target=self._serve, args=(loaded,), name="llama-engine", daemon=True
            )
            thread.start()
            try:
                await asyncio.shield(loaded)
            except BaseException:
                # A failed load ended the thread; a cancelled start stops it once loaded.
                self._loop.inbox.put(("stop", None))
                await asyncio.to_thread(thread.join)
                self._loop.drain_inbox()
                raise
            self._stopping = False
            self._prep = ThreadPoolExecutor(1, thread_name_prefix="llama-prep")
            self._thread = thread

    def _serve(self, loaded: asyncio.Future[None]) -> None:
        """The loop thread: load the model here, then run the batch loop.

        Every ``llama_decode`` (prefix evaluation included) runs on this one thread. llama.cpp's
        OpenMP build keeps a worker team per calling thread; a second team left docked by a
        loading thread counts as busy, so libgomp throttles the active team's barrier spin and
        its workers sleep in futex waits between graph nodes (8-sequence steps took 88 ms
        instead of ~65 ms on 2 cores).
        """
        aloop = loaded.get_loop()
        try:
            m = self._load(self._model_path, self._profiles)
        except BaseException as exc:
            call_soon(aloop, set_future, loaded, None, exc)
            return
        self._loop.attach(m)
        call_soon(aloop, set_future, loaded, None, None)
        self._loop.run()

    async def stop(self) -> None:
        """Stop the loop; pending generations fail with EngineError; free the model."""
        async with self._start_lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._loop.inbox.put(("stop", None))
            await asyncio.to_thread(thread.join)
            self._thread = None
            if self._prep is not None:
                self._prep.shutdown(wait=False, cancel_futures=True)
                self._prep = None

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue one request and wait for its result (see GenerationRequest)."""
        m = self._loop.m
        if self._thread is None or self._stopping or m is None or self._prep is None:
            raise EngineError("llama engine not started")
        if not self.alive():
            raise EngineError("llama engine loop is not running")
        m.profiles.get(request.prompt_profile)  # RequestRejected for unknown profiles
        if request.max_tokens > self._settings.max_tokens_limit:
            raise RequestRejected(
                f"max_tokens {request.max_tokens} exceeds the limit "
                f"{self._settings.max_tokens_limit}"
            )
        if request.max_tokens < 1:
            raise RequestRejected("max_tokens must be at least 1")
        loop = asyncio.get_running_loop()
        job = Job(request, loop.create_future(), loop, next(self._order))
        try:
            enc = await loop.run_in_executor(self._prep, _prepare, m, request)
        except ExplainstreamError:
            raise
        except Exception as exc:
            raise EngineError(f"prompt preparation failed: {exc}") from exc
        if enc is not None:
            check_budget(len(enc.tokens), request.max_tokens, self._seq_budget)
            job.prompt, job.prefix_len, job.generation = enc.tokens, enc.prefix_len, m.generation
            job.text = bytearray(enc.answer_prefix.encode())
        self._loop.inbox.put(("submit", job))
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._loop.inbox.put(("poke", None))
            raise

    async def warmup(self) -> None:
        """Generate a few tokens for every profile (exercises prefix KV and sampling)."""
        await asyncio.gather(*(self.generate(r) for r in warmup_requests(prompts.list_profiles())))

    async def reload(self, model_path: str | None = None) -> None:
        """Stop admitting, let in-flight sequences finish, swap model+context, resume.

        The prompt profile file is read again (a bad one raises ConfigError and changes
        nothing). Waiting requests stay queued and run on the new model. When the new model
        fails to load the old one keeps serving and ModelLoadError is raised.
        """
        if self._thread is None:
            raise EngineError("llama engine not started", retriable=False)
        path = model_files.resolve_model_path(model_path or self._model_path)
        model_files.validate_model_file(path)
        profiles = await asyncio.to_thread(
            prompts.load_profiles, self._settings.prompt_profiles_path
        )
        await asyncio.to_thread(model_files.file_sha256, path)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._loop.inbox.put(("reload", (path, profiles, done, loop)))
        await done
        self._model_path = path
        self._profiles = profiles
        prompts.activate(profiles)

    def render_prompt(self, profile: str, context: dict[str, Any]) -> tuple[str, EncodedPrompt]:
        """The prompt text and token ids a request would get (debugging, tests)."""
        m = self._loop.m
        if m is None:
            raise EngineError("llama engine not started", retriable=False)
        return m.prompter.render(profile, context), m.prompter.encode(profile, context)

    def stats(self) -> dict[str, Any]:
        """Counters for /status and /admin/stats."""
        c = self._counters
        m = self._loop.m
        out: dict[str, Any] = {
            "engine": self.name,
            "slots": self._n_slots,
            "slots_busy": c.busy_slots,
            "slots_free": self._n_slots - c.busy_slots,
            "waiting": c.waiting,
            **c.as_dict(),
            "n_ctx": m.n_ctx if m else 0,
            "n_batch": self._n_batch,
            "n_threads": self._n_threads,
            "n_threads_batch": self._n_threads,
            "model_path": m.path if m else self._model_path,
            "prompt_profiles": m.profiles.names() if m else self._profiles.names(),
        }
        cost = self._settings.cost_per_gpu_hour
        if cost is not None:
            out["cost_total"] = round(c.compute_s / 3600.0 * cost, 6)
            out["cost_per_request"] = (
                round(c.compute_s / c.completed / 3600.0 * cost, 8) if c.completed else 0.0
            )
        return out

    # ------------------------------------------------------------- model lifecycle

    def _shape(self) -> ContextShape:
        return ContextShape(
            n_slots=self._n_slots,
            n_batch=self._n_batch,
            n_threads=self._n_threads,
            n_threads_batch=self._n_threads,
            overrides=dict(self.context_overrides),
        )

    def _load(self, path: str, profiles: prompts.ProfileSet) -> NativeModel:
        return load_native(
            path, self._settings, self._shape(), profiles, self._batch, next(self._generation)
        )

    def _swap_model(
        self, old: NativeModel | None, path: str, profiles: prompts.ProfileSet
    ) -> NativeModel:
        """Runs on the loop thread once every sequence has finished."""
        free_first = self.reload_free_first
        if free_first is None:
            free_first = plan.free_old_first(
                os.path.getsize(path),
                _kv_bytes(old),
                model_files.available_memory_bytes(self._settings.n_gpu_layers != 0),
            )
        if not free_first or old is None:
            new = self._load(path, profiles)
            if old is not None:
                old.free()
            return new
        log.info("reload: freeing the old model first (both would not fit)")
        old.free()
        try:
            return self._load(path, profiles)
        except BaseException as exc:
            log.error("reload of %s failed (%s); loading the previous model again", path, exc)
            try:
                restored = self._load(old.path, old.profiles)
            except BaseException:
                log.exception("the previous model %s failed to load too", old.path)
                raise
            self._loop.attach(restored)
            if isinstance(exc, ExplainstreamError):
                raise
            raise ModelLoadError(str(exc)) from exc


def _prepare(m: NativeModel, request: GenerationRequest) -> EncodedPrompt | None:
    """Render and tokenise on the preparation thread; None when the model was freed."""
    with m.lock:
        if m.freed:
            return None
        return m.prompter.encode(request.prompt_profile, request.context, request.answer_prefix)


def _kv_bytes(m: NativeModel | None) -> int:
    """The KV cache of ``m``'s context (f16 estimate), to size the next one alike."""
    if m is None or m.freed:
        return 0
    import llama_cpp

    n_layer = llama_cpp.llama_model_n_layer(m.model)
    n_embd = llama_cpp.llama_model_n_embd(m.model)
    n_head = max(1, llama_cpp.llama_model_n_head(m.model))
    n_head_kv = llama_cpp.llama_model_n_head_kv(m.model)
    return 2 * 2 * n_layer * m.n_ctx * (n_embd * n_head_kv // n_head)
