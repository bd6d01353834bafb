"""The consumer service: lifecycle and wiring of the data path.

    Kafka tier topics ─► Intake (consumer.kafka.intake) ─► TierScheduler (consumer.core)
        ─► Dispatcher ─► RequestRunner ─► Engine ─► ResultSink (consumer.kafka.sinks/eos)
        ─► results topic; offsets committed by the sink for the handled prefix only.

This module starts and stops the parts, reacts to rebalances and runs the commit and
observe loops; every loop and task is supervised (:mod:`consumer.runtime.supervisor`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from consumer.config import TIERS, Delivery, Settings
from consumer.core.admission import AdmissionLimits, reply_policy
from consumer.core.breaker import BreakerState, CircuitBreaker
from consumer.core.offsets import OffsetTracker
from consumer.core.partitions import PartitionBook, PartitionState
from consumer.core.scheduler import TierScheduler
from consumer.engines import create_engine
from consumer.engines.backend import engine_backend
from consumer.engines.base import Engine
from consumer.engines.prompts import list_profiles
from consumer.kafka.deadletters import DeadLetters
from consumer.kafka.group import Listener, make_consumer, start_consumer
from consumer.kafka.intake import Intake, Work
from consumer.kafka.sinks import AtLeastOnceSink, ResultSink
from consumer.kafka.topics import settings_connection
from consumer.ops.lagseconds import LagSecondsEstimator
from consumer.ops.traces import Traces
from consumer.runtime import sick, signals
from consumer.runtime import status as status_view
from consumer.runtime.dispatch import Dispatcher
from consumer.runtime.fairness import fair_scheduler
from consumer.runtime.grounded import GroundedAnswer
from consumer.runtime.rebalance import RebalanceMixin
from consumer.runtime.runner import RequestRunner
from consumer.runtime.supervisor import Supervisor, finish_within
from schemas.codec import Codec
from schemas.models import ExplanationResult, ResultStatus
from schemas.registry import codec_from_settings

if TYPE_CHECKING:
    from consumer.ops.metrics import Metrics

__all__ = ["ConsumerService", "Work", "register"]

log = logging.getLogger("explainstream.consumer")


class ConsumerService(status_view.ControlMixin, RebalanceMixin):
    """The consumer service; ``async with ConsumerService(settings):`` runs it.

    Implements the HTTP layer's ServiceControl protocol (see :mod:`consumer.runtime.status`).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        metrics: Metrics | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.settings = s = settings
        self.engine: Engine = engine or create_engine(settings)
        self.metrics = metrics
        if self.metrics is None:
            with contextlib.suppress(ModuleNotFoundError):
                from consumer.ops.metrics import Metrics

                self.metrics = Metrics()
        self.codec = codec or codec_from_settings(s)
        self.consumer_id = s.consumer_id or f"{socket.gethostname()}-{os.getpid()}"
        self.topics = s.request_topics()
        self._tier_of_topic = {topic: tier for tier, topic in self.topics.items()}
        self.scheduler: TierScheduler[Work] = fair_scheduler(s)
        self.tracker = OffsetTracker()
        self.book = PartitionBook()
        self.breaker = CircuitBreaker(
            window=s.breaker_window,
            failure_rate=s.breaker_failure_rate,
            min_calls=s.breaker_min_calls,
            open_s=s.breaker_open_s,
            probes=s.breaker_probes,
            half_open_timeout_s=s.breaker_half_open_timeout_s,
        )
        self.limits = AdmissionLimits(
            max_tokens_limit=s.max_tokens_limit,
            max_context_bytes=s.max_context_bytes,
            profiles=frozenset(list_profiles()),
            reply_to_allowed=reply_policy(
                s.reply_to_allowed,
                results_topic=s.results_topic,
                topic_prefix=s.kafka_topic_prefix,
                forbidden=[*self.topics.values(), s.dlq_topic],
            ),
        )
        self.supervisor = Supervisor()
        self._wake = asyncio.Event()
        self._has_partitions = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._leaving: asyncio.Task[None] | None = None
        self.sick_reason: str | None = None
        self._started_at = time.monotonic()
        self._engine_ready = False
        self.sink: ResultSink | None = None
        self.intake: Intake | None = None
        self.runner: RequestRunner | None = None
        self.dispatcher: Dispatcher | None = None
        self.dead_letters: DeadLetters | None = None
        self._consumer: Any = None
        self._lag: dict[str, dict[int, int]] = {}
        # Service time per tier for lag seconds: every result that used the engine counts
        # (not OK ones only: a tier answering all FAILED read as 0 s of queued work), and a
        # tier with none borrows the others' mean, else 1 s: lag is never worth 0 s.
        self._service = LagSecondsEstimator(window=100, default_service_s=1.0)
        self._counts: dict[str, int] = {st.value: 0 for st in ResultStatus}
        # Engine seconds charged to each tier's requests, and how many requests carried some.
        self._compute: dict[str, list[float]] = {tier: [0.0, 0.0] for tier in TIERS}
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
        self._consumer = consumer = make_consumer(s, conn)
        if s.delivery is Delivery.EXACTLY_ONCE:
            from consumer.kafka.eos import TransactionalSink

            self.sink = TransactionalSink(
                conn,
                group_id=s.kafka_group_id,
                publish_timeout_s=s.publish_timeout_s,
                on_commit=self._commit_observed,
                on_lost=self._on_lost,
            )
        else:
            alo = AtLeastOnceSink(
                conn,
                consumer,
                publish_timeout_s=s.publish_timeout_s,
                on_commit=self._commit_observed,
            )
            await alo.start()
            self.sink = alo
        self.dead_letters = DeadLetters(
            self.sink,
            topic=s.dlq_topic,
            group=s.kafka_group_id,
            spawn=self.supervisor.task,
            on_done=self._dead_lettered,
        )
        self.intake = Intake(
            consumer,
            codec=self.codec,
            scheduler=self.scheduler,
            tracker=self.tracker,
            book=self.book,
            tiers=TIERS,
            dead_letters=self.dead_letters,
            breaker_open=lambda now: self.breaker.state(now) is BreakerState.OPEN,
            max_uncommitted=s.max_uncommitted_per_partition,
            wake=self._wake,
        )
        self.runner = runner = RequestRunner(
            settings=s,
            engine=self.engine,
            breaker=self.breaker,
            scheduler=self.scheduler,
            sink=self.sink,
            dead_letters=self.dead_letters,
            codec=self.codec,
            limits=self.limits,
            consumer_id=self.consumer_id,
            # Still the assignment it was taken in (not one revoked and given back since).
            owns=lambda work: self.book.owner(work.tp) == work.term,
            stopping=lambda: self._stopping,
            on_result=self._finished,
            on_retry=self._retrying,
            wake=self._wake,
            on_fallback=self.metrics.publish_fallback if self.metrics else lambda to: None,
            on_grounded=self._grounded,
            on_tokens=self.metrics.observe_tokens_timing if self.metrics else lambda *t: None,
            traces=Traces.from_env(group=s.kafka_group_id, consumer_id=self.consumer_id),
        )
        self.dispatcher = Dispatcher(
            scheduler=self.scheduler,
            runner=runner,
            slots=lambda: self.engine.slots,
            admitting=self._admitting,
            spawn=self.supervisor.task,
            wake=self._wake,
            overcommit=self.engine.slots,
            on_dispatch=self.metrics.observe_batch_size if self.metrics else None,
        )
        listener = Listener(self._on_assigned, self._on_revoked)
        await start_consumer(
            consumer, list(self.topics.values()), listener, s.kafka_bootstrap_servers
        )
        await self._start_http()
        self._publish_model_info()
        sup = self.supervisor
        sup.loop("intake", self.intake.run())
        sup.loop("dispatch", self.dispatcher.run())
        sup.loop("commit", self._commit_loop())
        sup.loop("observe", self._observe_loop())
        sup.loop("sick", self._sick_loop())
        log.info(
            "consumer %s started: engine=%s backend=%s slots=%d delivery=%s topics=%s",
            self.consumer_id,
            self.engine.name,
            engine_backend(self.engine),
            self.engine.slots,
            s.delivery.value,
            ",".join(self.topics.values()),
        )

    def _admitting(self, now: float) -> bool:
        return self.breaker.can_admit(now) and not self._reloading.locked()

    async def _start_http(self) -> None:
        s = self.settings
        try:
            from consumer.ops.http import HttpServer
        except ModuleNotFoundError:
            return
        self._http = HttpServer(
            self, admin_token=s.admin_token, metrics=self.metrics, model_dir=s.model_dir
        )
        self.http_port = await self._http.start(s.http_host, s.http_port)
        log.info("HTTP on %s:%d", s.http_host, self.http_port)
        if self.metrics is not None and s.prometheus_enabled:
            self.metrics_port = await self.metrics.serve(s.http_host, s.metrics_port)
            log.info("metrics on %s:%d/metrics", s.http_host, self.metrics_port)

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop intake, drain in-flight work within the deadline, publish, commit, leave."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.supervisor.stopping = True
        for part in (self.intake, self.dispatcher):
            if part is not None:
                part.stopping = True
        self._wake.set()
        deadline = drain_timeout_s if drain_timeout_s is not None else self.settings.drain_timeout_s
        await self.supervisor.cancel_loops(["intake", "dispatch"])
        self.scheduler.drain_all()  # uncommitted: the next owner reads them again
        cut = await finish_within(self.supervisor.all_tasks(), deadline)
        if cut:
            log.warning("%d requests cut at the drain deadline; the next owner redoes them", cut)
        await self.supervisor.cancel_loops(["commit", "observe", "sick"])
        # Final publish + commit must not be cut short by a second cancellation.
        await asyncio.shield(self._final_commit())
        await self._close_clients()
        if self._http is not None:
            await self._http.stop()
        if self.metrics is not None and self.metrics_port is not None:
            await self.metrics.close()
        await self.engine.stop()
        self._engine_ready = False
        self._stopped.set()
        log.info("consumer %s stopped", self.consumer_id)

    async def _final_commit(self) -> None:
        if self.sink is None:
            return
        try:
            await self.sink.commit(self.tracker, self.book.committable())
        except Exception as exc:
            log.error("final commit failed (the next owner redoes uncommitted work): %r", exc)

    async def _close_clients(self) -> None:
        for name, closer in (
            ("consumer", getattr(self._consumer, "stop", None)),
            ("sink", getattr(self.sink, "close", None)),
        ):
            if closer is None:
                continue
            try:
                await closer()
            except Exception as exc:
                log.warning("closing the %s failed: %r", name, exc)

    async def run_until_signal(self, prepare: Callable[[], Awaitable[object]] | None = None) -> int:
        """Run until SIGTERM or SIGINT (or a sick exit), then stop gracefully; returns the
        exit status. See :mod:`consumer.runtime.signals`."""
        return await signals.run_until_signal(self, prepare)

    def joined(self) -> bool:
        """Has start-up reached the consumer group (so a signal must drain, not exit)?"""
        return self._consumer is not None

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished (a sick exit included)."""
        await self._stopped.wait()

    # ------------------------------------------------------------------ sick exit
    async def _sick_loop(self) -> None:
        self.sick_reason = await sick.wait_sick(
            self.breaker, self.settings.breaker_max_open_s, lambda: self._stopping
        )
        log.error(
            "%s: leaving the group so a healthy member takes the partitions", self.sick_reason
        )
        # Its own task: stop() cancels this loop, and must not cancel itself with it.
        self._leaving = asyncio.create_task(self.stop(), name="sick-exit")
        await asyncio.Event().wait()

    # ------------------------------------------------------------------ results
    def _finished(self, work: Work, result: ExplanationResult) -> None:
        self.tracker.done(work.tp, work.offset)
        self._counts[result.status.value] += 1
        if result.processing_time_ms > 0:  # any status that took engine time
            self._service.observe(work.tier, result.processing_time_ms / 1000.0)
        compute_s = (result.compute_ms or 0.0) / 1000.0
        if result.compute_ms is not None:
            acc = self._compute[work.tier]
            acc[0] += compute_s
            acc[1] += 1
        if self.metrics is not None:
            if result.compute_ms is not None:
                self.metrics.observe_compute(work.tier, compute_s, self.settings.cost_per_gpu_hour)
            self.metrics.request_finished(
                work.tier,
                result.status.value,
                result.processing_time_ms / 1000.0,
                result.queue_time_ms / 1000.0,
                result.prompt_tokens,
                result.completion_tokens,
            )
            self.metrics.set_circuit_state(self.breaker.state(time.monotonic()).value)

    def lag_seconds(self, tier: str, lag: int) -> float:
        """Estimated seconds of work in ``lag`` records of ``tier`` for this instance."""
        return self._service.estimate(tier, lag, max(1, self.engine.slots))

    def _refresh_profiles(self) -> None:
        """A reload re-read PROMPT_PROFILES_PATH: admission must know its profiles too."""
        self.limits = replace(self.limits, profiles=frozenset(list_profiles()))
        if self.runner is not None:
            self.runner.limits = self.limits

    def _grounded(self, work: Work, answer: GroundedAnswer) -> None:
        if self.metrics is not None:
            self.metrics.observe_grounding(work.tier, answer.reports, answer.grounding)

    def _retrying(self, work: Work) -> None:
        if self.metrics is not None:
            self.metrics.retry(work.tier)
            self.metrics.set_circuit_state(self.breaker.state(time.monotonic()).value)

    def _dead_lettered(self, tp: Any, offset: int, topic: str, stage: str) -> None:
        self.tracker.done(tp, offset)
        if self.metrics is not None:
            self.metrics.dlq_record(topic, stage)

    # ------------------------------------------------------------------ offsets
    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            assert self.sink is not None
            try:
                await self.sink.commit(self.tracker, self.book.in_state(PartitionState.READY))
            except Exception as exc:  # a failed round is retried at the next interval
                log.warning("commit failed: %r", exc)

    def _commit_observed(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_commit_latency(seconds)

    # ------------------------------------------------------------------ observation
    async def _observe_loop(self) -> None:
        while True:
            try:  # bounded: offset reads wait out a coordinator that is loading or moving
                await asyncio.wait_for(status_view.observe(self), 10.0)
            except Exception as exc:  # metrics are best effort; the loop itself must live
                log.debug("observe failed: %r", exc)
            await asyncio.sleep(2.0)

    def _publish_model_info(self) -> None:
        if self.metrics is None:
            return
        try:
            info = self.engine.model_info()
        except Exception as exc:
            log.warning("model_info failed: %r", exc)
            return
        self.metrics.set_backend(engine_backend(self.engine))
        self.metrics.set_model_info(
            {
                "engine": self.engine.name,
                "model_name": info.model_name,
                "quantization": info.quantization,
                "model_sha256": info.model_sha256,
            }
        )
        self.metrics.set_circuit_state(self.breaker.state(time.monotonic()).value)


def _cmd_consume(args: argparse.Namespace) -> int:
    from consumer.kafka.topics import ensure_service_topics

    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level if not settings.debug else "DEBUG")

    async def main() -> int:
        return await ConsumerService(settings).run_until_signal(
            lambda: ensure_service_topics(settings)
        )

    return asyncio.run(main())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``consume``."""
    p = subparsers.add_parser("consume", help="run the consumer service until SIGTERM")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_cmd_consume)
