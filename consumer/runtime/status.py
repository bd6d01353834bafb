"""What the service shows: the HTTP layer's ServiceControl methods and the observe pass.

Liveness (GET /health) is False — 503, restart the pod — when a supervised loop or task
failed, when the engine's worker died (``Engine.alive()``), or when an exactly-once
partition stayed lost (fenced) longer than two session timeouts without the group taking it
back, or when the breaker stayed away from closed past BREAKER_MAX_OPEN_S (the service
then also leaves the group). Lag here uses the same arithmetic as the ``lag`` command
(:func:`consumer.kafka.lag.partition_lag`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from consumer.config import TIERS
from consumer.core.breaker import BreakerState
from consumer.core.partitions import PartitionState
from consumer.engines.backend import engine_backend
from consumer.kafka.lag import partition_lag
from schemas.version import __version__

if TYPE_CHECKING:
    from consumer.runtime.service import ConsumerService

__all__ = ["ControlMixin", "engine_alive", "observe"]


def compute_view(
    compute: dict[str, list[float]], cost_per_gpu_hour: float | None
) -> dict[str, dict[str, float | None]]:
    """Per tier: engine seconds, requests charged, and mean cost per request when priced."""
    view: dict[str, dict[str, float | None]] = {}
    for tier, (seconds, requests) in compute.items():
        cost = None
        if cost_per_gpu_hour is not None and requests:
            cost = seconds / requests / 3600.0 * cost_per_gpu_hour
        view[tier] = {"seconds": round(seconds, 6), "requests": requests, "cost_per_request": cost}
    return view


def engine_alive(engine: Any) -> bool:
    """The engine's own liveness; engines without ``alive()`` count as alive."""
    alive = getattr(engine, "alive", None)
    if alive is None:
        return True
    try:
        return bool(alive())
    except Exception:
        return False


class ControlMixin:
    """ServiceControl for :class:`~consumer.runtime.service.ConsumerService`."""

    def is_live(self: ConsumerService) -> bool:  # type: ignore[misc]
        """Loops and tasks healthy, engine thread alive, no partition lost for long."""
        if self.sick_reason is not None:
            return False
        if self._stopping:
            return True
        if not self.supervisor.loops or not self.supervisor.healthy():
            return False
        if not engine_alive(self.engine):
            return False
        grace = 2 * self.settings.kafka_session_timeout_ms / 1000.0
        return not self.book.lost_longer_than(grace, time.monotonic())

    def live_reasons(self: ConsumerService) -> dict[str, object]:  # type: ignore[misc]
        """Why liveness says what it says (for /status)."""
        return {
            "failures": list(self.supervisor.failures[-5:]),
            "sick": self.sick_reason,
            "engine_alive": engine_alive(self.engine),
            "lost_partitions": sorted(str(tp) for tp in self.book.in_state(PartitionState.LOST)),
        }

    async def wait_assigned(self: ConsumerService) -> None:  # type: ignore[misc]
        """Return once the group has assigned this consumer at least one ready partition."""
        await self._has_partitions.wait()

    def assigned(self: ConsumerService) -> set[Any]:  # type: ignore[misc]
        """Partitions owned now (any state)."""
        return set(self.book.tiers())

    def readiness(self: ConsumerService) -> tuple[bool, dict[str, object]]:  # type: ignore[misc]
        """Ready = model loaded, partitions assigned, breaker not open."""
        state = self.breaker.state(time.monotonic())
        owned = len(self.book.in_state(PartitionState.READY))
        reasons: dict[str, object] = {
            "model_loaded": self._engine_ready and not self._reloading.locked(),
            "partitions_assigned": owned,
            "breaker_state": state.value,
            "stopping": self._stopping,
        }
        ready = (
            bool(reasons["model_loaded"])
            and owned > 0
            and state is not BreakerState.OPEN
            and not self._stopping
        )
        return ready, reasons

    def status(self: ConsumerService) -> dict[str, object]:  # type: ignore[misc]
        """Snapshot for GET /status."""
        try:
            info = self.engine.model_info()
            model: dict[str, object] = {
                "model_name": info.model_name,
                "quantization": info.quantization,
                "gpu_layers": info.gpu_layers,
                "context_size": info.context_size,
                "model_sha256": info.model_sha256,
            }
        except Exception as exc:
            model = {"error": repr(exc)}
        slots = self.engine.slots
        in_flight = self.dispatcher.in_flight if self.dispatcher else dict.fromkeys(TIERS, 0)
        busy = sum(in_flight.values())
        paused = self.intake.paused if self.intake else set()
        return {
            "version": __version__,
            "consumer_id": self.consumer_id,
            "engine": self.engine.name,
            "backend": engine_backend(self.engine),
            "delivery": self.settings.delivery.value,
            "model": model,
            "slots": {"total": slots, "busy": busy, "free": max(0, slots - busy)},
            "tiers": {
                tier: {
                    "buffered": self.scheduler.depth(i),
                    "in_flight": in_flight[tier],
                    "paused": any(tp.topic == self.topics[tier] for tp in paused),
                    "lag": sum(self._lag.get(tier, {}).values()),
                }
                for i, tier in enumerate(TIERS)
            },
            "lag": {tier: dict(parts) for tier, parts in self._lag.items()},
            "breaker": self.breaker.state(time.monotonic()).value,
            "results": dict(self._counts),
            "compute": compute_view(self._compute, self.settings.cost_per_gpu_hour),
            "dlq": self.dead_letters.sent if self.dead_letters else 0,
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in self.assigned()),
            "live": self.live_reasons(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
        }

    async def warmup(self: ConsumerService) -> dict[str, object]:  # type: ignore[misc]
        """Run the engine's warm-up."""
        started = time.monotonic()
        await self.engine.warmup()
        return {"warmed_up": True, "duration_ms": round((time.monotonic() - started) * 1000, 1)}

    async def reload(  # type: ignore[misc]
        self: ConsumerService, model_path: str | None = None
    ) -> dict[str, object]:
        """Drain: stop dispatching, let in-flight finish, swap the model, resume."""
        async with self._reloading:
            started = time.monotonic()
            if self.dispatcher is not None:
                await self.dispatcher.idle.wait()
            await self.engine.reload(model_path)
            self._refresh_profiles()
        self._wake.set()
        self._publish_model_info()
        info = self.engine.model_info()
        return {
            "reloaded": True,
            "model_sha256": info.model_sha256,
            "model_name": info.model_name,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }

    def admin_stats(self: ConsumerService) -> dict[str, object]:  # type: ignore[misc]
        """Engine counters plus the status snapshot."""
        return {"status": self.status(), "engine": self.engine.stats()}


async def observe(svc: ConsumerService) -> None:
    """Refresh lag and gauges (the loop that owns the state reads it)."""
    consumer = svc._consumer
    if consumer is None:
        return
    owned = sorted(svc.assigned(), key=lambda tp: (tp.topic, tp.partition))
    ends = await consumer.end_offsets(owned) if owned else {}
    lag: dict[str, dict[int, int]] = {}
    metrics = svc.metrics
    for tp in owned:
        tier = svc._tier_of_topic[tp.topic]
        pos = svc.tracker.commit_position(tp)
        if pos is None:
            pos = await consumer.committed(tp)
        value = partition_lag(ends.get(tp, 0), pos)
        lag.setdefault(tier, {})[tp.partition] = value
        if metrics is not None:
            metrics.set_lag(tp.topic, tp.partition, tier, value)
    svc._lag = lag
    if metrics is None:
        return
    in_flight = svc.dispatcher.in_flight if svc.dispatcher else dict.fromkeys(TIERS, 0)
    for i, tier in enumerate(TIERS):
        metrics.set_queue_depth(tier, svc.scheduler.depth(i))
        metrics.set_in_flight(tier, in_flight[tier])
        metrics.set_tier_lag_seconds(tier, svc.lag_seconds(tier, sum(lag.get(tier, {}).values())))
    metrics.set_slots(sum(in_flight.values()), svc.engine.slots)
    metrics.set_circuit_state(svc.breaker.state(time.monotonic()).value)
    metrics.set_ready(svc.readiness()[0])
    stats = svc.engine.stats()
    if "tokens_per_second" in stats:
        metrics.set_tokens_per_second(float(stats["tokens_per_second"]))
    metrics.update_gpu()
