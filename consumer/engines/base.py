"""The engine seam: what the consumer core asks of an inference engine.

An engine accepts many concurrent :meth:`Engine.generate` calls (up to :attr:`Engine.slots`);
engines that batch (``llama``) run them together, others (``sequential``) serialise them.
The consumer's scheduler decides *which* request gets a free slot; the engine decides *how*
the admitted ones share the hardware.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from consumer.config import TIERS

__all__ = [
    "PRIORITY_BY_TIER",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "ModelInfo",
    "token_timing",
    "warmup_requests",
]

#: Lower number = more urgent: the index in :data:`consumer.config.TIERS` (topic suffixes).
PRIORITY_BY_TIER: dict[str, int] = {tier: i for i, tier in enumerate(TIERS)}


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Identity of the loaded model, copied into every result."""

    model_name: str
    quantization: str
    gpu_layers: int
    context_size: int
    model_sha256: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One explanation to generate.

    ``context`` is the AnalysisContext as a plain dict (analysis_type, symbol, metrics,
    attributes, as_of). ``deadline_monotonic`` is a :func:`time.monotonic` instant after
    which the engine must stop and raise :class:`~schemas.errors.DeadlineExceeded`
    (or return what it has with ``finish_reason="deadline"``).
    """

    request_id: str
    context: dict[str, Any]
    prompt_profile: str = "default"
    max_tokens: int = 200
    temperature: float = 0.1
    priority: int = 2
    deadline_monotonic: float | None = None
    seed: int | None = None
    ignore_eos: bool = False
    # GBNF the text must match (constrained decoding); engines without grammar support
    # ignore it, and the grounding checker still judges the text.
    grammar: str | None = None
    # The answer's first words, written by the engine itself (None: the profile's anchor).
    answer_prefix: str | None = None
    enqueued_monotonic: float = field(default_factory=time.monotonic)

    def remaining_s(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline, or None when there is none."""
        if self.deadline_monotonic is None:
            return None
        return self.deadline_monotonic - (time.monotonic() if now is None else now)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What the engine produced for one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "deadline"
    confidence_score: float | None = None
    processing_time_ms: float = 0.0
    compute_ms: float = 0.0
    # Engine step clock: from generate() to the step that sampled the first token, and the
    # mean gap between the later tokens (None when not measured or fewer than two tokens).
    first_token_s: float | None = None
    time_per_output_token_s: float | None = None


def token_timing(
    arrived: float, first: float | None, last: float | None, n_tokens: int
) -> tuple[float | None, float | None]:
    """(time to first token, time per output token) from step-clock instants.

    ``arrived`` is when the request entered the engine, ``first``/``last`` when its first
    and last tokens were sampled (None: none was). Time per output token is the mean gap
    after the first token, as vLLM and OpenTelemetry's gen_ai metrics define it.
    """
    if first is None:
        return None, None
    ttft = max(0.0, first - arrived)
    if last is None or n_tokens < 2:
        return ttft, None
    return ttft, max(0.0, last - first) / (n_tokens - 1)


def warmup_requests(profiles: list[str]) -> list[GenerationRequest]:
    """One tiny greedy request per prompt profile (warms the prefix KV and the sampler)."""
    return [
        GenerationRequest(
            request_id=f"warmup-{p}",
            context={"analysis_type": "warmup", "metrics": {"x": 1.0}},
            prompt_profile=p,
            max_tokens=4,
            temperature=0.0,
            priority=1,
        )
        for p in profiles
    ]


@runtime_checkable
class Engine(Protocol):
    """An inference engine; see the module docstring."""

    name: str

    @property
    def slots(self) -> int:
        """How many requests may be inside :meth:`generate` at once."""
        ...

    def model_info(self) -> ModelInfo:
        """Identity of the loaded model."""
        ...

    async def start(self) -> None:
        """Load the model (idempotent)."""
        ...

    async def stop(self) -> None:
        """Release the model; pending generate calls fail with EngineError."""
        ...

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one explanation. Raises EngineError, DeadlineExceeded, RequestRejected."""
        ...

    async def warmup(self) -> None:
        """Run a tiny generation so first real requests do not pay one-time costs."""
        ...

    async def reload(self, model_path: str | None = None) -> None:
        """Drain in-flight generations, swap the model, resume; no request is lost."""
        ...

    def stats(self) -> dict[str, Any]:
        """Engine counters for /status and /admin/stats (JSON-serialisable)."""
        ...

    def alive(self) -> bool:
        """Cheap liveness: True while the engine's worker runs (or has not started yet),
        False once it died. GET /health turns 503 on False."""
        ...
