"""One request, start to answer: admission, engine attempt, outcome, result, publish.

The runner classifies what happened and lets pure functions decide
(:func:`~consumer.core.admission.admit`, :func:`~consumer.core.outcome.decide`). Every path
ends in exactly one published result — OK, EXPIRED, REJECTED or FAILED — or in a requeue;
even an engine whose ``model_info`` fails, or a bug in this module, yields a FAILED result.
A breaker probe is taken only right before a real engine call and always given back.
An OK answer goes through the GROUNDING policy (:mod:`consumer.runtime.grounded`) first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from consumer.config import GroundingPolicy, Settings
from consumer.core.admission import (
    AdmissionLimits,
    Verdict,
    admit,
    context_bytes,
    destination,
)
from consumer.core.breaker import CircuitBreaker
from consumer.core.outcome import Attempt, BreakerNote, decide
from consumer.core.scheduler import Buffered, TierScheduler
from consumer.engines.base import Engine, GenerationRequest, GenerationResult, ModelInfo
from consumer.kafka.deadletters import DeadLetters, dlq_headers
from consumer.kafka.intake import Work
from consumer.kafka.sinks import Alternative, Headers, PublishError, Record, ResultSink
from consumer.ops.traces import Traces
from consumer.runtime.grounded import GroundedAnswer, ground, number_grammar
from schemas.codec import Codec
from schemas.errors import DeadlineExceeded, EncodeError, RequestRejected
from schemas.models import (
    ExplanationResult,
    Grounding,
    ModelInfoRecord,
    ResultStatus,
    SourceOffset,
    utcnow,
)
from schemas.version import __version__

__all__ = ["RequestRunner"]

log = logging.getLogger("explainstream.runner")

_UNKNOWN_MODEL = ModelInfo("unknown", "unknown", 0, 0, "")
_NO_PROBE_WAIT_S = 0.05


def deadline_monotonic(deadline: datetime | None) -> float | None:
    """A wall-clock deadline as a :func:`time.monotonic` instant."""
    if deadline is None:
        return None
    return time.monotonic() + (deadline - datetime.now(UTC)).total_seconds()


class RequestRunner:
    """Runs one buffered request (see module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        breaker: CircuitBreaker,
        scheduler: TierScheduler[Work],
        sink: ResultSink,
        dead_letters: DeadLetters,
        codec: Codec,
        limits: AdmissionLimits,
        consumer_id: str,
        owns: Callable[[Any], bool],
        stopping: Callable[[], bool],
        on_result: Callable[[Work, ExplanationResult], None],
        on_retry: Callable[[Work], None],
        wake: asyncio.Event,
        on_fallback: Callable[[str], None] = lambda to: None,
        on_grounded: Callable[[Work, GroundedAnswer], None] = lambda work, answer: None,
        on_tokens: Callable[[str, float | None, float | None], None] = lambda *timing: None,
        traces: Traces | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.breaker = breaker
        self.scheduler = scheduler
        self.sink = sink
        self.dead_letters = dead_letters
        self.codec = codec
        self.limits = limits
        self.consumer_id = consumer_id
        self._owns = owns
        self._stopping = stopping
        self._on_result = on_result
        self._on_retry = on_retry
        self._wake = wake
        self._on_fallback = on_fallback
        self._on_grounded = on_grounded
        self._on_tokens = on_tokens
        self.traces = traces or Traces(None, group=settings.kafka_group_id, consumer_id="")

    async def run(
        self, entry: Buffered[Work], priority: int, release_slot: Callable[[], None]
    ) -> None:
        """Run ``entry``; ``release_slot`` is called once the engine is done with it."""
        work = entry.item
        started = time.monotonic()
        self.traces.begin(work, started)
        try:
            result, backoff = await self._attempt(work, priority, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still end in an answer
            log.exception("request %s: unexpected failure", work.request.request_id)
            result, backoff = (
                self._result(work, ResultStatus.FAILED, None, repr(exc), started),
                None,
            )
        finally:
            release_slot()
        if result is None:
            if backoff is None:
                backoff = _NO_PROBE_WAIT_S  # not an attempt: the breaker had no probe left
            else:
                self._on_retry(work)
            await asyncio.sleep(backoff)
            if self._owns(work) and not self._stopping():
                self.scheduler.push_front(entry)
                self._wake.set()
            else:
                self.traces.finish(work, None)
            return  # not ours any more: the next owner reads it again
        try:
            with self.traces.span(work, "publish"):
                await self.publish(work, result)
        finally:
            self.traces.finish(work, result.status.value)

    async def _attempt(
        self, work: Work, priority: int, started: float
    ) -> tuple[ExplanationResult | None, float | None]:
        """(result, None) to publish, or (None, backoff) to requeue; (None, None) when the
        breaker had no probe left (requeued without counting an attempt)."""
        req = work.request
        if work.refused is not None:
            return self._result(work, ResultStatus.REJECTED, None, work.refused, started), None
        deadline = deadline_monotonic(req.deadline)
        context = req.context.model_dump()
        verdict = admit(
            remaining_s=None if deadline is None else deadline - started,
            prompt_profile=req.prompt_profile,
            max_tokens=req.max_tokens,
            context_size=context_bytes(context),
            reply_to=req.reply_to,
            limits=self.limits,
        )
        if verdict.verdict is Verdict.EXPIRE:
            return self._result(work, ResultStatus.EXPIRED, None, verdict.reason, started), None
        if verdict.verdict is Verdict.REJECT:
            return self._result(work, ResultStatus.REJECTED, None, verdict.reason, started), None
        if not self.breaker.allow(time.monotonic()):
            return None, None  # no probe left: back to the buffer, attempt not counted
        work.attempts += 1
        gen = GenerationRequest(
            request_id=req.request_id,
            context=context,
            prompt_profile=req.prompt_profile,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            priority=priority,
            deadline_monotonic=deadline,
            grammar=self._grammar(context),
        )
        with self.traces.span(work, "inference", **{"explainstream.attempt": work.attempts}):
            generated, attempt, error, retriable = await self._generate(gen, deadline, started)
            if generated is not None:
                self.traces.generated(work, self._model_info().model_name, generated)
        if generated is not None:
            self._on_tokens(work.tier, generated.first_token_s, generated.time_per_output_token_s)
        outcome = decide(
            attempt,
            error=error,
            retriable=retriable,
            attempts=work.attempts,
            retry_attempts=self.settings.retry_attempts,
            stopping=self._stopping(),
            backoff_ms=self.settings.retry_backoff_ms,
        )
        now = time.monotonic()
        if outcome.breaker is BreakerNote.SUCCESS:
            self.breaker.record(True, now)
        elif outcome.breaker is BreakerNote.FAILURE:
            self.breaker.record(False, now)
        else:
            self.breaker.release(now)
        if attempt is Attempt.FAILED:
            work.last_error = error or ""
            log.warning("request %s attempt %d failed: %s", req.request_id, work.attempts, error)
        if outcome.status is None:
            return None, outcome.backoff_s
        status = ResultStatus(outcome.status)
        grounding = None
        if status is ResultStatus.OK and generated is not None:
            answer = await ground(
                self.engine,
                gen,
                generated,
                self.settings.grounding,
                timeout_s=self.settings.request_timeout,
            )
            generated, grounding = answer.result, answer.grounding
            self._on_grounded(work, answer)
        return self._result(work, status, generated, outcome.error, started, grounding), None

    def _grammar(self, context: dict[str, Any]) -> str | None:
        """Checked answers are generated under the number grammar where the engine makes
        it cheap (bench quality: first answers grounded 21 % -> 62 % for ~9 % of tokens/s)."""
        if self.settings.grounding is GroundingPolicy.OFF:
            return None
        return number_grammar(context) if getattr(self.engine, "cheap_grammar", False) else None

    async def _generate(
        self, gen: GenerationRequest, deadline: float | None, started: float
    ) -> tuple[GenerationResult | None, Attempt, str | None, bool]:
        timeout = self.settings.request_timeout
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - started) + 0.05)
        try:
            generated = await asyncio.wait_for(self.engine.generate(gen), timeout)
        except asyncio.CancelledError:
            self.breaker.release(time.monotonic())
            raise
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                return None, Attempt.DEADLINE, "deadline passed during inference", False
            limit = self.settings.request_timeout
            return None, Attempt.FAILED, f"inference exceeded REQUEST_TIMEOUT={limit}s", True
        except DeadlineExceeded as exc:
            return None, Attempt.DEADLINE, str(exc), False
        except RequestRejected as exc:
            return None, Attempt.REJECTED, str(exc), False
        except Exception as exc:  # any engine fault is a policy decision, never a crash
            return None, Attempt.FAILED, f"{type(exc).__name__}: {exc}", exc_retriable(exc)
        if generated.finish_reason == "deadline":
            return generated, Attempt.DEADLINE, "deadline passed during inference", False
        return generated, Attempt.OK, None, False

    def _model_info(self) -> ModelInfo:
        try:
            return self.engine.model_info()
        except Exception as exc:  # a dead engine still owes the request an answer
            log.warning("model_info failed: %r", exc)
            return _UNKNOWN_MODEL

    def _result(
        self,
        work: Work,
        status: ResultStatus,
        generated: GenerationResult | None,
        error: str | None,
        started: float,
        grounding: Grounding | None = None,
    ) -> ExplanationResult:
        info = self._model_info()
        req = work.request
        processing_ms = (time.monotonic() - started) * 1000.0
        queue_ms = (started - work.received_monotonic) * 1000.0
        # Time spent before this consumer saw the request counts as queueing too.
        waited_before = max(
            0.0, (utcnow() - req.created_at).total_seconds() * 1000.0 - queue_ms - processing_ms
        )
        ok = generated is not None and status is ResultStatus.OK
        return ExplanationResult(
            request_id=req.request_id,
            status=status,
            explanation=generated.text if ok and generated else None,
            error=error,
            tier=work.tier,
            prompt_tokens=generated.prompt_tokens if generated else 0,
            completion_tokens=generated.completion_tokens if generated else 0,
            queue_time_ms=queue_ms + waited_before,
            processing_time_ms=generated.processing_time_ms if generated else processing_ms,
            completed_at=utcnow(),
            confidence_score=generated.confidence_score if generated else None,
            compute_ms=generated.compute_ms if generated else None,
            model_info=ModelInfoRecord(
                model_name=info.model_name,
                quantization=info.quantization,
                gpu_layers=info.gpu_layers,
                context_size=info.context_size,
                model_sha256=info.model_sha256,
            ),
            prompt_profile=req.prompt_profile,
            consumer_id=self.consumer_id,
            replay_of=req.replay_of,
            request_offset=SourceOffset(
                topic=work.tp.topic, partition=work.tp.partition, offset=work.offset
            ),
            attempts=max(1, work.attempts),
            grounding=grounding if ok else None,
            service_version=__version__,
        )

    async def publish(self, work: Work, result: ExplanationResult) -> None:
        """Write the result; a destination that fails within PUBLISH_TIMEOUT_S gets a FAILED
        answer on the default results topic instead, and if that fails too the request
        goes to the DLQ. Only then is the offset done. (Exactly-once learns of a refusal
        only at commit time; the same fallbacks go with the record as its alternatives.)"""
        default = self.settings.results_topic
        topic = destination(work.request.reply_to, self.limits.reply_to_allowed, default)
        try:
            await self._put(work, topic, result)
        except PublishError as exc:
            log.error("result of %s not published to %s: %s", result.request_id, topic, exc)
            failed = _failed(result, topic, exc)
            try:
                if topic == default:
                    raise
                await self._put(work, default, failed)
                self._on_fallback("results")
                result = failed
            except PublishError as again:
                key, value, headers = self._dead_letter(work, again)
                await self.dead_letters.send_now(work.tp, work.offset, key, value, headers)
                self._on_fallback("dlq")
                result = failed
        self._on_result(work, result)

    def _dead_letter(self, work: Work, error: BaseException) -> tuple[bytes, bytes | None, Headers]:
        """(key, value, headers) of the DLQ record for a request whose answer was refused."""
        headers = dlq_headers(
            self.traces.headers(work),
            topic=work.tp.topic,
            partition=work.tp.partition,
            offset=work.offset,
            timestamp=0,
            group=self.settings.kafka_group_id,
            error=error,
            stage="publish",
        )
        return work.request.request_id.encode(), work.value, headers

    def _alternatives(self, work: Work, topic: str, result: ExplanationResult) -> list[Alternative]:
        """What to write, in order, if ``topic`` refuses the result for good at commit time."""
        default = self.settings.results_topic

        def failed_on_default(exc: BaseException) -> Record:
            self._on_fallback("results")
            failed = _failed(result, topic, exc)
            status = [("explainstream.status", failed.status.value.encode())]
            status += self.traces.headers(work)
            return default, failed.request_id.encode(), self.codec.encode_result(failed), status

        def dead_letter(exc: BaseException) -> Record:
            self._on_fallback("dlq")
            key, value, headers = self._dead_letter(work, exc)
            return self.dead_letters.topic, key, value, headers

        return [dead_letter] if topic == default else [failed_on_default, dead_letter]

    async def _put(self, work: Work, topic: str, result: ExplanationResult) -> None:
        try:
            value = self.codec.encode_result(result)
        except EncodeError as exc:
            # e.g. an explanation over the record size limit: answer FAILED, small.
            value = self.codec.encode_result(
                result.model_copy(
                    update={
                        "status": ResultStatus.FAILED,
                        "explanation": None,
                        "error": str(exc),
                        "grounding": None,
                    }
                )
            )
        if not await self.sink.writable(topic):
            raise PublishError(f"topic {topic} is not writable (missing or not permitted)")
        headers = [("explainstream.status", result.status.value.encode())]
        headers += self.traces.headers(work)
        key = result.request_id.encode()
        # Only a deferring sink learns of a refusal after this call returns.
        alternatives = self._alternatives(work, topic, result) if self.sink.defers_writes else ()
        await self.sink.put(work.tp, work.offset, topic, key, value, headers, alternatives)


def _failed(result: ExplanationResult, topic: str, error: BaseException) -> ExplanationResult:
    """``result`` turned into the FAILED answer for a destination that refused it."""
    return result.model_copy(
        update={
            "status": ResultStatus.FAILED,
            "explanation": None,
            "error": f"result could not be published to {topic}: {error}",
            "grounding": None,
        }
    )


def exc_retriable(exc: BaseException) -> bool:
    """The project-wide ``retriable`` flag of an exception (False when absent)."""
    return bool(getattr(exc, "retriable", False))
