"""The ``fake`` engine: deterministic text, no model. For pipeline tests and benchmarks only.

FAKE_LATENCY_MS adds per-request latency (requests overlap up to ``slots``, like a batching
engine), FAKE_TOKENS_PER_S adds time per generated token, and FAKE_FAILURE_RATE makes a
deterministic fraction of attempts fail with a retriable EngineError, so tests can create
contention and faults reproducibly.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from consumer.config import Settings
from consumer.engines.base import GenerationRequest, GenerationResult, ModelInfo, token_timing
from consumer.engines.prompts import list_profiles
from schemas.errors import DeadlineExceeded, EngineError

__all__ = ["FakeEngine"]


class FakeEngine:
    """Implements :class:`consumer.engines.base.Engine` without a model."""

    name = "fake"
    cheap_grammar = True  # ignores grammars

    def __init__(self, settings: Settings) -> None:
        self._slots = settings.max_concurrent_requests
        self.latency_s = settings.fake_latency_ms / 1000.0
        self.failure_rate = settings.fake_failure_rate
        self.tokens_per_s = settings.fake_tokens_per_s
        self._attempts: dict[str, int] = {}
        self._in_flight = 0
        self._generated = 0
        self._requests = 0
        self._started = False
        self._model_path = "fake"

    @property
    def slots(self) -> int:
        """Concurrent generations allowed."""
        return self._slots

    @property
    def profiles(self) -> tuple[str, ...]:
        """Prompt profiles this engine knows."""
        return tuple(list_profiles())

    def model_info(self) -> ModelInfo:
        """A stable fake identity."""
        digest = hashlib.sha256(self._model_path.encode()).hexdigest()
        return ModelInfo("fake", "none", 0, 0, digest)

    async def start(self) -> None:
        """Nothing to load."""
        self._started = True

    async def stop(self) -> None:
        """Nothing to release."""
        self._started = False

    def _should_fail(self, request_id: str, attempt: int) -> bool:
        if self.failure_rate <= 0:
            return False
        digest = hashlib.sha256(f"{request_id}:{attempt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.failure_rate

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Deterministic explanation of ``request.context`` after the configured latency."""
        if not self._started:
            raise EngineError("fake engine is not started", retriable=True)
        started = time.monotonic()
        attempt = self._attempts.get(request.request_id, 0) + 1
        self._attempts[request.request_id] = attempt
        if len(self._attempts) > 100_000:
            self._attempts.clear()
        ctx = request.context
        symbol = ctx.get("symbol") or "the market"
        metrics = ctx.get("metrics") or {}
        parts = ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items()))
        text = f"{ctx.get('analysis_type', 'analysis')} for {symbol}: {parts or 'no metrics'}."
        words = text.split()
        n_tokens = request.max_tokens if request.ignore_eos else min(len(words), request.max_tokens)
        per_token = 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0
        delay = self.latency_s + n_tokens * per_token
        self._in_flight += 1
        try:
            remaining = request.remaining_s()
            if remaining is not None and remaining < delay:
                await asyncio.sleep(max(0.0, remaining))
                raise DeadlineExceeded("deadline passed during generation")
            # Two phases on the same clock as a real engine: "prefill" plus the first
            # token, then the remaining tokens.
            first_in = self.latency_s + (per_token if n_tokens else 0.0)
            if first_in:
                await asyncio.sleep(first_in)
            first = time.monotonic() if n_tokens else None
            if n_tokens > 1 and per_token:
                await asyncio.sleep((n_tokens - 1) * per_token)
            last = time.monotonic() if n_tokens else None
            if self._should_fail(request.request_id, attempt):
                raise EngineError(f"injected failure (attempt {attempt})", retriable=True)
        finally:
            self._in_flight -= 1
        ttft, tpot = token_timing(started, first, last, n_tokens)
        self._requests += 1
        self._generated += n_tokens
        elapsed_ms = (time.monotonic() - started) * 1000.0
        return GenerationResult(
            text=" ".join(words[:n_tokens]) if not request.ignore_eos else text,
            prompt_tokens=len(str(ctx)) // 4 + 16,
            completion_tokens=n_tokens,
            finish_reason="length" if n_tokens >= request.max_tokens else "stop",
            confidence_score=0.9,
            processing_time_ms=elapsed_ms,
            compute_ms=elapsed_ms,  # the simulated work is all this request's
            first_token_s=ttft,
            time_per_output_token_s=tpot,
        )

    async def warmup(self) -> None:
        """Nothing to warm."""

    async def reload(self, model_path: str | None = None) -> None:
        """Pretend to swap models (changes model_sha256)."""
        self._model_path = model_path or self._model_path

    def alive(self) -> bool:
        """No worker to die: always True."""
        return True

    def stats(self) -> dict[str, Any]:
        """Counters for /status."""
        return {
            "engine": self.name,
            "slots_total": self._slots,
            "slots_busy": self._in_flight,
            "requests": self._requests,
            "tokens_generated": self._generated,
        }
