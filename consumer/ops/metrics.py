"""Prometheus metrics of the consumer, behind one object with an injected registry.

Every method is cheap and synchronous; call it from the asyncio loop that owns the state.
The old HTTP service's names are kept verbatim (``llama_*``); new series are
``explainstream_*``. The reference page docs/manual/metrics.md is generated from this object
(``make docs-reference``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)

from consumer.ops.compute_metrics import ComputeMetrics
from consumer.ops.gpu import GpuProbe
from consumer.ops.grounding_metrics import GroundingMetrics
from consumer.ops.lagseconds import LagSecondsEstimator
from consumer.ops.serving_metrics import ServingMetrics

if TYPE_CHECKING:
    from consumer.kafka.lag import LagReport

__all__ = ["BREAKER_STATES", "STATUSES", "LagSecondsEstimator", "Metrics"]

log = logging.getLogger(__name__)

TIERS: tuple[str, ...] = ("urgent", "high", "normal", "low")
STATUSES: tuple[str, ...] = ("OK", "EXPIRED", "FAILED", "REJECTED")
BREAKER_STATES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}
REBALANCE_KINDS: tuple[str, ...] = ("assigned", "revoked")

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics(ComputeMetrics, GroundingMetrics, ServingMetrics):
    """All consumer metrics in one registry (a fresh one unless ``registry`` is given)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, gpu: GpuProbe | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._gpu = gpu if gpu is not None else GpuProbe()
        self._runner: web.AppRunner | None = None
        self._queue_depth: dict[str, int] = dict.fromkeys(TIERS, 0)
        reg = self.registry
        ProcessCollector(registry=reg)

        # The old service's names, verbatim.
        self.requests = Counter(
            "llama_requests",
            "Requests finished, by tier and result status",
            ["priority", "status"],
            registry=reg,
        )
        self.processing = Histogram(
            "llama_processing_duration_seconds",
            "Engine time per request (admission to result)",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens_generated = Counter(
            "llama_tokens_generated", "Completion tokens generated", ["priority"], registry=reg
        )
        self.queue_depth = Gauge(
            "llama_queue_depth",
            "Requests buffered in the consumer, not yet in a slot",
            ["priority"],
            registry=reg,
        )
        self.gpu_memory_used = Gauge(
            "llama_gpu_memory_usage_bytes",
            "GPU memory in use (NVML; absent without a GPU)",
            ["gpu"],
            registry=reg,
        )
        self.tokens_per_second = Gauge(
            "llama_tokens_per_second", "Recent generation throughput of the engine", registry=reg
        )

        # New series.
        self.prompt_tokens = Counter(
            "explainstream_prompt_tokens", "Prompt tokens evaluated", ["priority"], registry=reg
        )
        self.results = Counter(
            "explainstream_results",
            "Result records published, by status",
            ["status"],
            registry=reg,
        )
        self.queue_wait = Histogram(
            "explainstream_queue_wait_seconds",
            "Time from record creation to engine admission",
            ["priority"],
            buckets=_WAIT_BUCKETS,
            registry=reg,
        )
        self.buffered = Gauge(
            "explainstream_buffered_requests", "Requests buffered over all tiers", registry=reg
        )
        self.in_flight = Gauge(
            "explainstream_in_flight_requests",
            "Requests running in the engine",
            ["priority"],
            registry=reg,
        )
        self.slots_busy = Gauge("explainstream_slots_busy", "Engine slots busy", registry=reg)
        self.slots_capacity = Gauge(
            "explainstream_slots_capacity", "Engine slots in total", registry=reg
        )
        self.batch_size = Histogram(
            "explainstream_batch_size",
            "Sequences in the engine when a request is admitted",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.dlq = Counter(
            "explainstream_dlq_records",
            "Records sent to the dead-letter topic",
            ["source_topic", "stage"],
            registry=reg,
        )
        self.publish_fallbacks = Counter(
            "explainstream_publish_fallbacks",
            "Results whose destination refused them, by what was written instead "
            "(results: FAILED on the default results topic; dlq: the request dead-lettered); "
            "under exactly-once counted when the transaction finds the refusal",
            ["to"],
            registry=reg,
        )
        for to in ("results", "dlq"):  # present at 0, so the first refusal is an increase
            self.publish_fallbacks.labels(to=to)
        self.breaker_state = Gauge(
            "explainstream_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half_open, 2 open",
            registry=reg,
        )
        self.breaker_in_state = Gauge(
            "explainstream_circuit_breaker_in_state",
            "1 for the breaker's current state, 0 for the others",
            ["state"],
            registry=reg,
        )
        self.rebalances = Counter(
            "explainstream_rebalances",
            "Partition rebalances seen by this consumer",
            ["kind"],
            registry=reg,
        )
        self.partitions_lost = Counter(
            "explainstream_partitions_lost",
            "Exactly-once partitions given up: fenced (another member owns it), refused "
            "(a record refused everywhere), unprepared (no producer or committed offset)",
            ["reason"],
            registry=reg,
        )
        self.commit_latency = Histogram(
            "explainstream_commit_latency_seconds",
            "Offset commit (or transaction) round trip",
            buckets=_COMMIT_BUCKETS,
            registry=reg,
        )
        self.lag = Gauge(
            "explainstream_consumer_lag_records",
            "Consumer group lag (log end - committed offset) per partition",
            ["topic", "partition", "priority"],
            registry=reg,
        )
        self.lag_seconds = Gauge(
            "explainstream_consumer_lag_seconds",
            "Estimated seconds of work in the lag: lag x recent mean service time / slots",
            ["priority"],
            registry=reg,
        )
        self.retries = Counter(
            "explainstream_retries",
            "Engine retries after a retriable failure",
            ["priority"],
            registry=reg,
        )
        self.ready = Gauge("explainstream_ready", "1 when /ready answers 200", registry=reg)
        self.model_info = Info(
            "explainstream_model",
            "The loaded model: engine, model_name, quantization, model_sha256",
            registry=reg,
        )
        self.gpu_available = Gauge(
            "explainstream_gpu_available", "1 when NVML sees a GPU, else 0", registry=reg
        )
        self.gpu_memory_total = Gauge(
            "explainstream_gpu_memory_total_bytes",
            "GPU memory in total (NVML)",
            ["gpu"],
            registry=reg,
        )
        self.gpu_utilization = Gauge(
            "explainstream_gpu_utilization_ratio",
            "GPU busy ratio 0..1 (NVML)",
            ["gpu"],
            registry=reg,
        )

        # Known label sets start at zero so rate() and dashboards see them from the first scrape.
        for tier in TIERS:
            for status in STATUSES:
                self.requests.labels(priority=tier, status=status)
            self.processing.labels(priority=tier)
            self.queue_wait.labels(priority=tier)
            self.tokens_generated.labels(priority=tier)
            self.prompt_tokens.labels(priority=tier)
            self.retries.labels(priority=tier)
            self.queue_depth.labels(priority=tier).set(0)
            self.in_flight.labels(priority=tier).set(0)
        for status in STATUSES:
            self.results.labels(status=status)
        for kind in REBALANCE_KINDS:
            self.rebalances.labels(kind=kind)
        self.set_circuit_state("closed")
        self.gpu_available.set(0)
        self._grounding()
        self._serving()
        self._build_info()

    # -- requests -------------------------------------------------------------------------

    def request_finished(
        self,
        tier: str,
        status: str,
        processing_s: float,
        queue_wait_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Count one finished request (one result record) and its timings and tokens."""
        self.requests.labels(priority=tier, status=status).inc()
        self.results.labels(status=status).inc()
        if processing_s >= 0:
            self.processing.labels(priority=tier).observe(processing_s)
        if queue_wait_s >= 0:
            self.queue_wait.labels(priority=tier).observe(queue_wait_s)
        if prompt_tokens > 0:
            self.prompt_tokens.labels(priority=tier).inc(prompt_tokens)
        if completion_tokens > 0:
            self.tokens_generated.labels(priority=tier).inc(completion_tokens)

    def retry(self, tier: str) -> None:
        """Count one engine retry."""
        self.retries.labels(priority=tier).inc()

    # -- queue, slots, engine -----------------------------------------------------------

    def set_queue_depth(self, tier: str, buffered: int) -> None:
        """Requests of ``tier`` buffered, not yet in a slot; also updates the all-tier total."""
        self._queue_depth[tier] = buffered
        self.queue_depth.labels(priority=tier).set(buffered)
        self.buffered.set(sum(self._queue_depth.values()))

    def set_in_flight(self, tier: str, n: int) -> None:
        """Requests of ``tier`` running in the engine."""
        self.in_flight.labels(priority=tier).set(n)

    def set_slots(self, busy: int, total: int) -> None:
        """Engine slots busy and in total."""
        self.slots_busy.set(busy)
        self.slots_capacity.set(total)

    def observe_batch_size(self, n: int) -> None:
        """Sequences in one engine step (or concurrent requests when one is admitted)."""
        self.batch_size.observe(n)

    def set_tokens_per_second(self, value: float) -> None:
        """Recent generation throughput."""
        self.tokens_per_second.set(value)

    # -- reliability --------------------------------------------------------------------

    def dlq_record(self, source_topic: str, stage: str) -> None:
        """Count one record sent to the DLQ; ``stage`` says where it failed (e.g. decode)."""
        self.dlq.labels(source_topic=source_topic, stage=stage).inc()

    def publish_fallback(self, to: str) -> None:
        """Count one result written elsewhere (``results`` or ``dlq``) after a refusal."""
        self.publish_fallbacks.labels(to=to).inc()

    def set_circuit_state(self, state: str) -> None:
        """Breaker state: ``closed``, ``half_open`` or ``open``."""
        if state not in BREAKER_STATES:
            raise ValueError(f"unknown breaker state {state!r}")
        self.breaker_state.set(BREAKER_STATES[state])
        for name in BREAKER_STATES:
            self.breaker_in_state.labels(state=name).set(1 if name == state else 0)

    def set_ready(self, ready: bool) -> None:
        """Mirror of /ready."""
        self.ready.set(1 if ready else 0)

    def set_model_info(self, info: Mapping[str, object]) -> None:
        """Model name, quantization, ... as labels of ``explainstream_model_info``."""
        self.model_info.info({str(k): "" if v is None else str(v) for k, v in info.items()})

    # -- Kafka --------------------------------------------------------------------------

    def rebalance(self, kind: str) -> None:
        """Count a rebalance callback: ``assigned`` or ``revoked``."""
        self.rebalances.labels(kind=kind).inc()

    def partition_lost(self, reason: str) -> None:
        """Count an exactly-once partition given up, by ``reason``."""
        self.partitions_lost.labels(reason=reason).inc()

    def observe_commit_latency(self, seconds: float) -> None:
        """One offset commit's round trip."""
        self.commit_latency.observe(seconds)

    def set_lag(self, topic: str, partition: int, tier: str, lag: int) -> None:
        """Group lag of one partition, in records."""
        self.lag.labels(topic=topic, partition=str(partition), priority=tier).set(lag)

    def drop_lag(self, topic: str, partition: int) -> None:
        """Forget a partition's lag series (call on revoke so stale values don't linger)."""
        for tier in TIERS:
            with contextlib.suppress(KeyError):
                self.lag.remove(topic, str(partition), tier)

    def set_tier_lag_seconds(self, tier: str, seconds: float) -> None:
        """Estimated seconds of work in ``tier``'s lag (see :class:`LagSecondsEstimator`)."""
        self.lag_seconds.labels(priority=tier).set(seconds)

    def replace_lag(self, report: LagReport, estimator: LagSecondsEstimator | None = None) -> None:
        """Export a whole lag report, dropping partitions it no longer contains."""
        self.lag.clear()
        for row in report.partitions:
            self.set_lag(row.topic, row.partition, row.tier, row.lag)
        if estimator is not None:
            for tier, total in report.tier_totals().items():
                self.set_tier_lag_seconds(tier, estimator.estimate(tier, total))

    # -- GPU ----------------------------------------------------------------------------

    def update_gpu(self) -> None:
        """Read NVML now; without a GPU only ``explainstream_gpu_available 0`` is exported."""
        samples = self._gpu.sample()
        self.gpu_available.set(1 if samples else 0)
        for s in samples:
            gpu = str(s.index)
            self.gpu_memory_used.labels(gpu=gpu).set(s.memory_used_bytes)
            self.gpu_memory_total.labels(gpu=gpu).set(s.memory_total_bytes)
            if s.utilization_ratio is not None:
                self.gpu_utilization.labels(gpu=gpu).set(s.utilization_ratio)

    # -- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in Prometheus text format (GPU gauges refreshed first)."""
        self.update_gpu()
        return generate_latest(self.registry)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """aiohttp handler for ``GET /metrics``."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def serve(self, host: str, port: int) -> int:
        """Serve ``GET /metrics`` on ``host:port`` (0: ephemeral); returns the bound port."""
        if self._runner is not None:
            raise RuntimeError("metrics server already running")
        app = web.Application()
        app.router.add_get("/metrics", self.handle_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = _bound_port(runner)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    async def close(self) -> None:
        """Stop the metrics server (idempotent) and release NVML."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._gpu.close()


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("server bound no TCP address")
