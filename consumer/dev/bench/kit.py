"""Shared parts of the Kafka benchmarks: broker, requests, result collection, consumers.

Every benchmark measures its comparison side by side in one run and reports ratios, because
the machines it runs on are often shared. Latencies are Kafka record timestamps: the request
record's CreateTime (set here, at send) to the result record's CreateTime (set by whoever
published the result), so both sides of a comparison are timed by the same clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.dev.bench.cli import BENCH_CONTEXTS, _Progress, percentile
from consumer.dev.bench.proc import ConsumerProcess, consumer_env
from consumer.dev.ports import free_port

__all__ = [
    "ConsumerProcess",
    "NullProgress",
    "Progress",
    "ResultCollector",
    "bench_broker",
    "consumer_env",
    "emit",
    "free_port",
    "latency_summary",
    "machine_info",
    "publish",
    "request_bytes",
]

Progress = _Progress


class NullProgress:
    """A progress bar that prints nothing (``--no-progress``)."""

    total = 0
    label = ""

    def advance(self, n: int = 1) -> None:
        """Nothing to show."""


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, platform, date, load at the start and the git revision of a run."""
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    revision = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        revision = out.stdout.strip() or None
    return {
        "revision": revision,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1m_at_start": round(load[0], 2),
    }


@contextlib.contextmanager
def bench_broker() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS when set, else a local single-node broker for the run."""
    import logging

    from consumer.dev.localkafka import local_kafka

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # SIGTERM (a timeout, make) unwinds like Ctrl-C, so consumer subprocesses are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with local_kafka("bench") as bootstrap:
        yield bootstrap or os.environ["KAFKA_BOOTSTRAP_SERVERS"]


def request_bytes(
    i: int, *, max_tokens: int = 64, temperature: float = 0.0, tag: str = "bench"
) -> tuple[bytes, bytes]:
    """(key, Confluent-framed Avro value) of a new request with the ``i``-th bench context.

    ``tag`` is the request's ``source``.
    """
    from schemas.codec import Codec
    from schemas.models import AnalysisContext, ExplanationRequest

    codec = _codec()
    assert isinstance(codec, Codec)
    profile, context = BENCH_CONTEXTS[i % len(BENCH_CONTEXTS)]
    request = ExplanationRequest(
        request_id=str(uuid.uuid4()),
        context=AnalysisContext(**context),
        max_tokens=max_tokens,
        temperature=temperature,
        prompt_profile=profile,
        source=tag,
    )
    return request.request_id.encode(), codec.encode_request(request)


_CODEC: list[Any] = []


def _codec() -> Any:
    if not _CODEC:
        from schemas.codec import Codec

        _CODEC.append(Codec())
    return _CODEC[0]


async def ensure(bootstrap: str, prefix: str, partitions: int) -> None:
    """Create the service topics of ``prefix``."""
    from consumer.kafka.topics import all_topics, ensure_topics
    from producer_sdk import KafkaConnection

    await ensure_topics(KafkaConnection(bootstrap), all_topics(prefix), partitions=partitions)


async def publish(
    producer: Any,
    topic: str,
    items: Sequence[tuple[bytes, bytes]],
    sent_ms: dict[bytes, int] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    chunk: int = 2000,
    partitions: int | None = None,
) -> None:
    """Send ``items`` as fast as the producer takes them; record each send time (ms).

    With ``partitions`` the items go round-robin to partitions 0..partitions-1 (an even
    spread), else the key decides.
    """
    for start in range(0, len(items), chunk):
        futures = []
        for n, (key, value) in enumerate(items[start : start + chunk], start):
            now = int(time.time() * 1000)
            if sent_ms is not None:
                sent_ms[key] = now
            part = None if partitions is None else n % partitions
            futures.append(
                await producer.send(topic, value, key=key, timestamp_ms=now, partition=part)
            )
        await asyncio.gather(*futures)
        if on_chunk is not None:
            on_chunk(len(futures))


async def publish_paced(
    producer: Any,
    topic: str,
    items: Sequence[tuple[bytes, bytes]],
    rate_per_s: float,
    sent_ms: dict[bytes, int],
) -> None:
    """Send ``items`` at ``rate_per_s``, each on its own schedule (no bursts to catch up)."""
    t0 = time.perf_counter()
    futures = []
    for n, (key, value) in enumerate(items):
        delay = t0 + n / rate_per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = int(time.time() * 1000)
        sent_ms[key] = now
        futures.append(await producer.send(topic, value, key=key, timestamp_ms=now))
    await asyncio.gather(*futures)


def make_producer(bootstrap: str, linger_ms: int = 0) -> Any:
    """An idempotent aiokafka producer (acks=all), like the service's."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms
    )


@dataclass(slots=True)
class Arrival:
    """One record read back: its key, CreateTime (ms), partition, value, and read time."""

    key: bytes
    timestamp_ms: int
    partition: int
    value: bytes
    read_at: float


@dataclass
class ResultCollector:
    """Reads a topic from the start in the background; values are decoded only on request."""

    bootstrap: str
    topic: str
    arrivals: list[Arrival] = field(default_factory=list)
    on_record: Callable[[], None] | None = None
    keep_values: bool = True
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Start reading (read_committed, from the earliest offset)."""
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read(), name=f"collect {self.topic}")
        self._task.add_done_callback(self._crashed)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._changed.set()  # wake waiters; wait_for re-raises

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    value = r.value if self.keep_values else b""
                    self.arrivals.append(Arrival(r.key, r.timestamp, r.partition, value, now))
                    if self.on_record is not None:
                        self.on_record()
            if batch:
                self._changed.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        """Until ``count`` records have arrived; TimeoutError names how many did."""
        deadline = time.monotonic() + timeout_s
        while len(self.arrivals) < count:
            if self._task is not None and self._task.done():
                self._task.result()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.arrivals)}/{count} results on {self.topic}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    def decoded(self) -> list[Any]:
        """Every arrival decoded as an ExplanationResult."""
        codec = _codec()
        return [codec.decode_result(a.value) for a in self.arrivals]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Count, p50, p95, p99 and max of latencies in milliseconds."""
    return {
        "count": len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else float("nan"),
    }


def latencies_ms(arrivals: Sequence[Arrival], sent_ms: Mapping[bytes, int]) -> list[float]:
    """Result CreateTime minus request CreateTime for every arrival whose key was sent."""
    return [float(a.timestamp_ms - sent_ms[a.key]) for a in arrivals if a.key in sent_ms]


def breakdown_ms(
    arrivals: Sequence[Arrival], sent_ms: Mapping[bytes, int]
) -> list[dict[str, float]]:
    """Where each sent request's latency went, from its result record.

    ``total_ms`` (result CreateTime - request CreateTime), ``engine_ms`` (the engine's
    ``processing_time_ms``: for the llama engine from taking a slot to the last token),
    ``compute_ms`` (decode time charged to it) and ``outside_ms`` (the rest: Kafka both
    ways, intake, scheduler, waiting for a slot or for the step in progress, publishing).
    """
    codec = _codec()
    out = []
    for a in arrivals:
        if a.key not in sent_ms:
            continue
        r = codec.decode_result(a.value)
        total = float(a.timestamp_ms - sent_ms[a.key])
        out.append(
            {
                "total_ms": total,
                "engine_ms": r.processing_time_ms,
                "compute_ms": r.compute_ms if r.compute_ms is not None else float("nan"),
                "outside_ms": total - r.processing_time_ms,
            }
        )
    return out


def common_args(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--no-progress`` on a bench subcommand."""
    p.add_argument("--json", action="store_true", help="print one JSON object (else markdown)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")


def emit(report: dict[str, Any], args: argparse.Namespace, markdown: Callable[..., str]) -> None:
    """Print the report as JSON (``--json``) or as a markdown summary; ``--out`` keeps the JSON."""
    if getattr(args, "out", None):
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(clean(report), indent=1) + "\n")
        tmp.replace(path)
    if args.json:
        print(json.dumps(clean(report)))
    else:
        print(markdown(report))


def clean(value: Any) -> Any:
    """``value`` with NaN floats replaced by None, so the JSON is strict."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def prefix(name: str) -> str:
    """A topic prefix unique to this run."""
    return f"b{name}{int(time.time() * 1000) % 10**9}"


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero."""
    return a / b if b else float("nan")
