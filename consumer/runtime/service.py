"""The consumer service: tier topics in, one result per request out.

Loop structure (STYLE.md "decide, then act"):

* **intake** polls Kafka (always, so max.poll.interval.ms never lapses, aiokafka #848),
  decodes records into the :class:`~consumer.core.scheduler.TierScheduler` (undecodable ones go
  to the DLQ), and pauses the partitions of full tiers — or of every tier while the breaker
  is open — so memory stays flat whatever the backlog;
* **dispatch** moves the scheduler's pick into a free engine slot (at most
  MAX_CONCURRENT_REQUESTS in the engine);
* each request task runs the engine with deadline, timeout, retry and breaker policy and
  publishes exactly one result;
* **commit** commits per partition only the contiguous completed prefix
  (:class:`~consumer.core.offsets.OffsetTracker`).

``DELIVERY=exactly-once`` replaces the last two steps: results of a partition are held until
they form a contiguous prefix and then published together with that prefix's offsets in one
Kafka transaction (see :mod:`consumer.kafka.eos`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumer.core.breaker import BreakerState, CircuitBreaker
from consumer.config import TIERS, Delivery, Settings
from consumer.engines import create_engine
from consumer.engines.base import Engine, GenerationRequest, GenerationResult
from consumer.engines.prompts import list_profiles
from consumer.core.offsets import OffsetTracker
from consumer.core.scheduler import Buffered, TierScheduler
from consumer.kafka.topics import settings_connection
from schemas.errors import (
    DeadlineExceeded,
    DecodeError,
    EngineError,
    KafkaUnavailable,
    RequestRejected,
)
from schemas.models import (
    ExplanationRequest,
    ExplanationResult,
    ModelInfoRecord,
    ResultStatus,
    SourceOffset,
    utcnow,
)
from schemas.registry import codec_from_settings

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from consumer.ops.metrics import Metrics

__all__ = ["ConsumerService", "Work", "register"]

log = logging.getLogger("explainstream.consumer")


@dataclass(slots=True)
class Work:
    """A decoded request and where it came from."""

    request: ExplanationRequest
    tp: TopicPartition
    offset: int
    tier: str
    received_monotonic: float
    attempts: int = 0
    last_error: str = ""
    processing_ms: float = 0.0


@dataclass
class _TierStats:
    """Exponentially weighted mean service time per tier, for lag-in-seconds."""

    mean_service_s: dict[str, float] = field(default_factory=dict)

    def observe(self, tier: str, seconds: float) -> None:
        old = self.mean_service_s.get(tier)
        self.mean_service_s[tier] = seconds if old is None else 0.9 * old + 0.1 * seconds


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: ConsumerService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._service._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._service._on_assigned(set(assigned))


class ConsumerService:
    """The consumer service; ``async with ConsumerService(settings):`` runs it.

    Implements the HTTP layer's ServiceControl protocol (is_live, readiness, status,
    warmup, reload, admin_stats).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine: Engine = engine or create_engine(settings)
        self.metrics = metrics
        if self.metrics is None:
            with contextlib.suppress(ModuleNotFoundError):
                from consumer.ops.metrics import Metrics

                self.metrics = Metrics()
        self.codec = codec_from_settings(settings)
        self.consumer_id = settings.consumer_id or f"{socket.gethostname()}-{os.getpid()}"
        self.topics = settings.request_topics()
        self._tier_of_topic = {topic: tier for tier, topic in self.topics.items()}
        self.scheduler: TierScheduler[Work] = TierScheduler.with_total_capacity(
            settings.max_queue_size, tiers=len(TIERS), aging_s=settings.aging_s
        )
        self.tracker = OffsetTracker()
        self.breaker = CircuitBreaker(
            window=settings.breaker_window,
            failure_rate=settings.breaker_failure_rate,
            min_calls=settings.breaker_min_calls,
            open_s=settings.breaker_open_s,
            probes=settings.breaker_probes,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._eos: Any = None
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._in_flight: dict[str, int] = dict.fromkeys(TIERS, 0)
        self._assigned: set[TopicPartition] = set()
        self._has_partitions = asyncio.Event()
        self._revoking: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()  # the dispatcher took work out of the buffers
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._intake_stopped = False
        self._loops: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()
        self._engine_ready = False
        self._tier_stats = _TierStats()
        self._lag: dict[str, dict[int, int]] = {}
        self._counts: dict[str, int] = {s.value: 0 for s in ResultStatus}
        self._dlq_count = 0
        self._reloading = asyncio.Lock()
        self._http: Any = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ConsumerService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the engine, connect to Kafka, start HTTP/metrics and the loops."""
        s = self.settings
        await self.engine.start()
        if s.warmup_on_start:
            # Before joining the group: the first real request should not pay for cold caches.
            await self.engine.warmup()
        self._engine_ready = True
        conn = settings_connection(s).aiokafka_kwargs()
        if s.delivery is Delivery.EXACTLY_ONCE:
            from consumer.kafka.eos import TransactionalPublisher

            self._eos = TransactionalPublisher(
                conn, group_id=s.kafka_group_id, on_commit=self._commit_observed
            )
        else:
            self._producer = AIOKafkaProducer(
                **conn, acks="all", enable_idempotence=True, linger_ms=2
            )
            await self._producer.start()
        consumer_kwargs: dict[str, Any] = {}
        if s.kafka_group_instance_id:
            consumer_kwargs["group_instance_id"] = s.kafka_group_instance_id
        self._consumer = AIOKafkaConsumer(
            **conn,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=s.kafka_max_poll_interval_ms,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=min(3000, s.kafka_session_timeout_ms // 3),
            max_partition_fetch_bytes=256 * 1024,
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            **consumer_kwargs,
        )
        try:
            await self._consumer.start()
        except KafkaError as exc:
            raise KafkaUnavailable(f"Kafka at {s.kafka_bootstrap_servers}: {exc}") from exc
        self._consumer.subscribe(list(self.topics.values()), listener=_Rebalance(self))
        await self._start_http()
        if self.metrics is not None:
            info = self.engine.model_info()
            self.metrics.set_model_info(
                {
                    "engine": self.engine.name,
                    "model_name": info.model_name,
                    "quantization": info.quantization,
                    "model_sha256": info.model_sha256,
                }
            )
            self.metrics.set_circuit_state(BreakerState.CLOSED.value)
        self._loops = [
            asyncio.create_task(self._intake_loop(), name="intake"),
            asyncio.create_task(self._dispatch_loop(), name="dispatch"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._observe_loop(), name="observe"),
        ]
        log.info(
            "consumer %s started: engine=%s slots=%d delivery=%s topics=%s",
            self.consumer_id,
            self.engine.name,
            self.engine.slots,
            s.delivery.value,
            ",".join(self.topics.values()),
        )

    async def _start_http(self) -> None:
        s = self.settings
        try:
            from consumer.ops.http import HttpServer
        except ModuleNotFoundError:
            return
        self._http = HttpServer(self, admin_token=s.admin_token, metrics=self.metrics)
        self.http_port = await self._http.start(s.http_host, s.http_port)
        log.info("HTTP on %s:%d", s.http_host, self.http_port)
        if self.metrics is not None and s.prometheus_enabled:
            self.metrics_port = await self.metrics.serve(s.http_host, s.metrics_port)
            log.info("metrics on %s:%d/metrics", s.http_host, self.metrics_port)

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop intake, drain in-flight work within the deadline, publish, commit, leave."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        deadline = drain_timeout_s if drain_timeout_s is not None else self.settings.drain_timeout_s
        for task in self._loops:
            if task.get_name() in {"intake", "dispatch"}:
                task.cancel()
        await asyncio.gather(*self._loops[:2], return_exceptions=True)
        self.scheduler.drain_all()  # uncommitted: the next owner reads them again
        pending = [t for ts in self._tasks.values() for t in ts]
        if pending:
            _, late = await asyncio.wait(pending, timeout=deadline)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for task in self._loops[2:]:
            task.cancel()
        await asyncio.gather(*self._loops[2:], return_exceptions=True)
        # Final publish + commit must not be cut short by a second cancellation.
        await asyncio.shield(self._final_commit())
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        if self._eos is not None:
            with contextlib.suppress(Exception):
                await self._eos.close()
        if self._http is not None:
            await self._http.stop()
        if self.metrics is not None and self.metrics_port is not None:
            await self.metrics.close()
        await self.engine.stop()
        self._engine_ready = False
        log.info("consumer %s stopped", self.consumer_id)

    async def _final_commit(self) -> None:
        with contextlib.suppress(Exception):
            await self._commit(self._assigned)

    async def run_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("signal received: draining")
        finally:
            await self.stop()

    # ------------------------------------------------------------------ intake
    def _desired_pauses(self, now: float) -> set[TopicPartition]:
        """Decide which assigned partitions must be paused right now."""
        breaker_open = self.breaker.state(now) is BreakerState.OPEN
        paused: set[TopicPartition] = set()
        for tp in self._assigned:
            tier = self._tier_of_topic.get(tp.topic)
            if tier is None:
                continue
            if breaker_open or self.scheduler.is_full(TIERS.index(tier)) or tp in self._revoking:
                paused.add(tp)
        return paused

    async def _intake_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            now = time.monotonic()
            want = self._desired_pauses(now) & consumer.assignment()
            # aiokafka forgets pauses on rebalance, so compare with its view, not ours.
            have = consumer.paused()
            if want - have:
                consumer.pause(*(want - have))
            if have - want:
                consumer.resume(*(have - want))
            self._paused = want
            assigned = consumer.assignment()
            if assigned and want >= assigned:
                # Everything is paused: a fetch would only idle for its timeout. Wake as soon
                # as the dispatcher frees buffer space (or re-check pauses every 100 ms).
                self._space.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._space.wait(), timeout=0.1)
                continue
            free = max(
                (self.scheduler.free(i) for i, t in enumerate(TIERS)),
                default=0,
            )
            try:
                batch = await consumer.getmany(timeout_ms=100, max_records=max(1, min(free, 100)))
            except KafkaError as exc:
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if batch:
                self._take(batch)

    def _take(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        now = time.monotonic()
        for tp, records in batch.items():
            tier = self._tier_of_topic.get(tp.topic)
            if tier is None or tp not in self._assigned or tp in self._revoking:
                continue
            for record in records:
                self.tracker.started(tp, record.offset)
                try:
                    request = self.codec.decode_request(record.value)
                except DecodeError as exc:
                    self._spawn(tp, self._dead_letter(tp, record, exc, stage="decode"))
                    continue
                work = Work(request, tp, record.offset, tier, now)
                self.scheduler.push(work, TIERS.index(tier), now, source=tp)
        self._wake.set()

    # ------------------------------------------------------------------ dispatch
    def _busy(self) -> int:
        return sum(self._in_flight.values())

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            self._dispatch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.25)
            self._wake.clear()

    def _dispatch(self) -> None:
        """Fill free engine slots with the scheduler's picks."""
        slots = self.engine.slots
        buffered = len(self.scheduler)
        while self._busy() < slots and len(self.scheduler) and not self._reloading.locked():
            now = time.monotonic()
            if not self.breaker.allow(now):
                break
            entry = self.scheduler.pick(now)
            if entry is None:
                break
            work = entry.item
            self._in_flight[work.tier] += 1
            self._idle.clear()
            if self.metrics is not None:
                self.metrics.observe_batch_size(self._busy())
            self._spawn(work.tp, self._run(entry))
        if len(self.scheduler) < buffered:
            self._space.set()  # the intake may resume paused tiers

    def _spawn(self, tp: TopicPartition, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # ------------------------------------------------------------------ one request
    def _reject_reason(self, request: ExplanationRequest) -> str | None:
        profiles = list_profiles()
        if request.prompt_profile not in profiles:
            return (
                f"unknown prompt_profile {request.prompt_profile!r} (known: {', '.join(profiles)})"
            )
        if request.max_tokens > self.settings.max_tokens_limit:
            limit = self.settings.max_tokens_limit
            return f"max_tokens {request.max_tokens} exceeds the limit {limit}"
        return None

    async def _run(self, entry: Buffered[Work]) -> None:
        work = entry.item
        req = work.request
        started = time.monotonic()
        status: ResultStatus
        generated: GenerationResult | None = None
        error: str | None = None
        requeue = False
        try:
            deadline_mono = _deadline_monotonic(req.deadline)
            reason = self._reject_reason(req)
            if deadline_mono is not None and deadline_mono <= started:
                status, error = ResultStatus.EXPIRED, "deadline passed before inference"
            elif reason is not None:
                status, error = ResultStatus.REJECTED, reason
            else:
                work.attempts += 1
                gen_req = GenerationRequest(
                    request_id=req.request_id,
                    context=req.context.model_dump(),
                    prompt_profile=req.prompt_profile,
                    max_tokens=req.max_tokens,
                    temperature=req.temperature,
                    priority=TIERS.index(work.tier),
                    deadline_monotonic=deadline_mono,
                )
                timeout = self.settings.request_timeout
                if deadline_mono is not None:
                    timeout = min(timeout, max(0.0, deadline_mono - started) + 0.05)
                try:
                    generated = await asyncio.wait_for(self.engine.generate(gen_req), timeout)
                except TimeoutError:
                    if deadline_mono is not None and time.monotonic() >= deadline_mono:
                        raise DeadlineExceeded("deadline passed during inference") from None
                    raise EngineError(
                        f"inference exceeded REQUEST_TIMEOUT={self.settings.request_timeout}s",
                        retriable=True,
                    ) from None
                if generated.finish_reason == "deadline":
                    status, error = ResultStatus.EXPIRED, "deadline passed during inference"
                else:
                    status = ResultStatus.OK
                self.breaker.record(True, time.monotonic())
        except DeadlineExceeded as exc:
            status, error = ResultStatus.EXPIRED, str(exc)
        except RequestRejected as exc:
            status, error = ResultStatus.REJECTED, str(exc)
        except Exception as exc:  # any engine fault is a policy decision, never a crash
            self.breaker.record(False, time.monotonic())
            work.last_error = f"{type(exc).__name__}: {exc}"
            retriable = getattr(exc, "retriable", False)
            if retriable and work.attempts < self.settings.retry_attempts and not self._stopping:
                requeue = True
                status = ResultStatus.FAILED
            else:
                status = ResultStatus.FAILED
                error = f"failed after {work.attempts} attempt(s): {work.last_error}"
            log.warning("request %s attempt %d failed: %s", req.request_id, work.attempts, exc)
        finally:
            self._in_flight[work.tier] -= 1
            if not self._busy():
                self._idle.set()
            self._wake.set()
            if self.metrics is not None:
                self.metrics.set_circuit_state(self.breaker.state(time.monotonic()).value)
        elapsed = time.monotonic() - started
        if requeue:
            if self.metrics is not None:
                self.metrics.retry(work.tier)
            backoff = self.settings.retry_backoff_ms / 1000.0 * (2 ** (work.attempts - 1))
            await asyncio.sleep(backoff)
            if work.tp in self._assigned and work.tp not in self._revoking and not self._stopping:
                self.scheduler.push_front(entry)
                self._wake.set()
            return
        if status is ResultStatus.OK:
            self._tier_stats.observe(work.tier, elapsed)
        queue_ms = (started - work.received_monotonic) * 1000.0
        result = self._result(work, status, generated, error, queue_ms, elapsed * 1000.0)
        await self._publish(work, result)

    def _result(
        self,
        work: Work,
        status: ResultStatus,
        generated: GenerationResult | None,
        error: str | None,
        queue_ms: float,
        processing_ms: float,
    ) -> ExplanationResult:
        info = self.engine.model_info()
        req = work.request
        # Time spent before this consumer saw the request counts as queueing too.
        waited_before = max(
            0.0, (utcnow() - req.created_at).total_seconds() * 1000.0 - queue_ms - processing_ms
        )
        return ExplanationResult(
            request_id=req.request_id,
            status=status,
            explanation=generated.text if generated and status is ResultStatus.OK else None,
            error=error,
            tier=work.tier,
            prompt_tokens=generated.prompt_tokens if generated else 0,
            completion_tokens=generated.completion_tokens if generated else 0,
            queue_time_ms=queue_ms + waited_before,
            processing_time_ms=generated.processing_time_ms if generated else processing_ms,
            completed_at=utcnow(),
            confidence_score=generated.confidence_score if generated else None,
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
        )

    async def _publish(self, work: Work, result: ExplanationResult) -> None:
        topic = work.request.reply_to or self.settings.results_topic
        value = self.codec.encode_result(result)
        key = result.request_id.encode()
        headers = [("explainstream.status", result.status.value.encode())]
        if self._eos is not None:
            await self._eos.add(work.tp, work.offset, topic, key, value, headers)
        else:
            await self._send_reliably(topic, key, value, headers)
        self.tracker.done(work.tp, work.offset)
        self._counts[result.status.value] += 1
        if self.metrics is not None:
            self.metrics.request_finished(
                work.tier,
                result.status.value,
                result.processing_time_ms / 1000.0,
                result.queue_time_ms / 1000.0,
                result.prompt_tokens,
                result.completion_tokens,
            )

    async def _send_reliably(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send and await the ack, retrying while Kafka is unavailable (never drop)."""
        assert self._producer is not None
        delay = 0.2
        while True:
            try:
                await self._producer.send_and_wait(topic, value, key=key, headers=headers)
                return
            except KafkaError as exc:
                if not getattr(exc, "retriable", True) and not self._stopping:
                    log.error("publish to %s failed permanently: %s", topic, exc)
                log.warning("publish to %s failed (%s); retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ DLQ
    async def _dead_letter(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        exc: Exception,
        *,
        stage: str,
    ) -> None:
        headers = list(record.headers or ())
        headers += [
            ("dlq.error.class", type(exc).__name__.encode()),
            ("dlq.error.message", str(exc)[:2000].encode()),
            ("dlq.original.topic", tp.topic.encode()),
            ("dlq.original.partition", str(tp.partition).encode()),
            ("dlq.original.offset", str(record.offset).encode()),
            ("dlq.original.timestamp", str(record.timestamp).encode()),
            ("dlq.consumer.group", self.settings.kafka_group_id.encode()),
            ("dlq.failed.at", datetime.now(UTC).isoformat().encode()),
            ("dlq.stage", stage.encode()),
            ("dlq.attempts", b"1"),
        ]
        log.warning("record %s:%d@%d to DLQ: %s", tp.topic, tp.partition, record.offset, exc)
        if self._eos is not None:
            await self._eos.add(
                tp, record.offset, self.settings.dlq_topic, record.key, record.value, headers
            )
        else:
            await self._send_reliably(self.settings.dlq_topic, record.key, record.value, headers)
        self.tracker.done(tp, record.offset)
        self._dlq_count += 1
        if self.metrics is not None:
            self.metrics.dlq_record(tp.topic, stage)

    # ------------------------------------------------------------------ offsets
    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self._commit(self._assigned - self._revoking)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("commit failed: %s", exc)

    async def _commit(self, tps: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None or not tps:
            return
        for tp in tps:
            if self.tracker.outstanding(tp) == 0 and tp in consumer.assignment():
                # Past control records (transaction markers) the position is ahead.
                with contextlib.suppress(Exception):
                    self.tracker.fetched_up_to(tp, await consumer.position(tp))
        if self._eos is not None:
            await self._eos.flush(self.tracker, tps)
            return
        offsets = self.tracker.to_commit(tps)
        if not offsets:
            return
        started = time.monotonic()
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions; the new owner re-reads from the last commit.
            log.info("commit skipped during rebalance: %s", exc)
            return
        self.tracker.committed(offsets)
        self._commit_observed(time.monotonic() - started)

    def _commit_observed(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_commit_latency(seconds)

    # ------------------------------------------------------------------ rebalance
    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned |= assigned
        if self._assigned:
            self._has_partitions.set()
        self._revoking -= assigned
        if self.metrics is not None:
            self.metrics.rebalance("assigned")
        log.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        self._wake.set()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop admitting, finish (or cancel within a bound) in-flight work, commit, release."""
        if not revoked:
            return
        self._revoking |= revoked
        dropped = self.scheduler.drop_sources(revoked)
        tasks = [t for tp in revoked for t in self._tasks.get(tp, ())]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._commit(revoked)
        if self._eos is not None:
            await self._eos.release(revoked)
        self.tracker.forget(revoked)
        self._assigned -= revoked
        if not self._assigned:
            self._has_partitions.clear()
        self._revoking -= revoked
        if self.metrics is not None:
            self.metrics.rebalance("revoked")
            for tp in revoked:
                self.metrics.drop_lag(tp.topic, tp.partition)
        log.info(
            "revoked %d partitions (%d buffered requests left for the next owner)",
            len(revoked),
            len(dropped),
        )

    # ------------------------------------------------------------------ observation
    async def _observe_loop(self) -> None:
        while True:
            try:
                await self._observe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("observe failed: %s", exc)
            await asyncio.sleep(2.0)

    async def _observe(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        assigned = sorted(self._assigned, key=lambda tp: (tp.topic, tp.partition))
        ends = await consumer.end_offsets(assigned) if assigned else {}
        lag: dict[str, dict[int, int]] = {}
        for tp in assigned:
            tier = self._tier_of_topic[tp.topic]
            pos = self.tracker.commit_position(tp)
            if pos is None:
                committed = await consumer.committed(tp)
                pos = committed if committed is not None else 0
            value = max(0, ends.get(tp, 0) - pos)
            lag.setdefault(tier, {})[tp.partition] = value
            if self.metrics is not None:
                self.metrics.set_lag(tp.topic, tp.partition, tier, value)
        self._lag = lag
        if self.metrics is not None:
            slots = max(1, self.engine.slots)
            for i, tier in enumerate(TIERS):
                self.metrics.set_queue_depth(tier, self.scheduler.depth(i))
                self.metrics.set_in_flight(tier, self._in_flight[tier])
                mean = self._tier_stats.mean_service_s.get(tier)
                total = sum(lag.get(tier, {}).values())
                self.metrics.set_tier_lag_seconds(tier, total * (mean or 0.0) / slots)
            self.metrics.set_slots(self._busy(), self.engine.slots)
            self.metrics.set_circuit_state(self.breaker.state(time.monotonic()).value)
            self.metrics.set_ready(self.readiness()[0])
            stats = self.engine.stats()
            if "tokens_per_second" in stats:
                self.metrics.set_tokens_per_second(float(stats["tokens_per_second"]))
            self.metrics.update_gpu()

    # ------------------------------------------------------------------ ServiceControl
    def is_live(self) -> bool:
        """The process and its loops are running."""
        return (bool(self._loops) and not any(t.done() for t in self._loops[:3])) or self._stopping

    async def wait_assigned(self) -> None:
        """Return once the group has assigned this consumer at least one partition."""
        await self._has_partitions.wait()

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready = model loaded, partitions assigned, breaker not open."""
        state = self.breaker.state(time.monotonic())
        reasons: dict[str, object] = {
            "model_loaded": self._engine_ready and not self._reloading.locked(),
            "partitions_assigned": len(self._assigned),
            "breaker_state": state.value,
            "stopping": self._stopping,
        }
        ready = (
            bool(reasons["model_loaded"])
            and bool(self._assigned)
            and state is not BreakerState.OPEN
            and not self._stopping
        )
        return ready, reasons

    def status(self) -> dict[str, object]:
        """Snapshot for GET /status."""
        info = self.engine.model_info()
        slots = self.engine.slots
        busy = self._busy()
        return {
            "consumer_id": self.consumer_id,
            "engine": self.engine.name,
            "delivery": self.settings.delivery.value,
            "model": {
                "model_name": info.model_name,
                "quantization": info.quantization,
                "gpu_layers": info.gpu_layers,
                "context_size": info.context_size,
                "model_sha256": info.model_sha256,
            },
            "slots": {"total": slots, "busy": busy, "free": max(0, slots - busy)},
            "tiers": {
                tier: {
                    "buffered": self.scheduler.depth(i),
                    "in_flight": self._in_flight[tier],
                    "paused": any(tp.topic == self.topics[tier] for tp in self._paused),
                    "lag": sum(self._lag.get(tier, {}).values()),
                }
                for i, tier in enumerate(TIERS)
            },
            "lag": {tier: dict(parts) for tier, parts in self._lag.items()},
            "breaker": self.breaker.state(time.monotonic()).value,
            "results": dict(self._counts),
            "dlq": self._dlq_count,
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in self._assigned),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
        }

    async def warmup(self) -> dict[str, object]:
        """Run the engine's warm-up."""
        started = time.monotonic()
        await self.engine.warmup()
        return {"warmed_up": True, "duration_ms": round((time.monotonic() - started) * 1000, 1)}

    async def reload(self, model_path: str | None = None) -> dict[str, object]:
        """Drain: stop dispatching, let in-flight finish, swap the model, resume."""
        async with self._reloading:
            started = time.monotonic()
            await self._idle.wait()
            await self.engine.reload(model_path)
        self._wake.set()
        info = self.engine.model_info()
        if self.metrics is not None:
            self.metrics.set_model_info(
                {
                    "engine": self.engine.name,
                    "model_name": info.model_name,
                    "quantization": info.quantization,
                    "model_sha256": info.model_sha256,
                }
            )
        return {
            "reloaded": True,
            "model_sha256": info.model_sha256,
            "model_name": info.model_name,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }

    def admin_stats(self) -> dict[str, object]:
        """Engine counters plus the status snapshot."""
        return {"status": self.status(), "engine": self.engine.stats()}


def _deadline_monotonic(deadline: datetime | None) -> float | None:
    if deadline is None:
        return None
    remaining = (deadline - datetime.now(UTC)).total_seconds()
    return time.monotonic() + remaining


def _cmd_consume(args: argparse.Namespace) -> int:
    from consumer.kafka.topics import ensure_service_topics

    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level if not settings.debug else "DEBUG")

    async def main() -> None:
        await ensure_service_topics(settings)
        await ConsumerService(settings).run_until_signal()

    asyncio.run(main())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``consume``."""
    p = subparsers.add_parser("consume", help="run the consumer service until SIGTERM")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_cmd_consume)
