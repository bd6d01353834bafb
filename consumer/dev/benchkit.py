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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.dev.bench import BENCH_CONTEXTS, _Progress, percentile

__all__ = [
    "ConsumerProcess",
    "NullProgress",
    "Progress",
    "ResultCollector",
    "bench_broker",
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

    from consumer.dev.devbroker import local_kafka

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # SIGTERM (a timeout, make) unwinds like Ctrl-C, so consumer subprocesses are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with local_kafka("bench") as bootstrap:
        yield bootstrap or os.environ["KAFKA_BOOTSTRAP_SERVERS"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class ConsumerProcess:
    """One ``explainstream consume`` in a subprocess, ready when its ``/ready`` answers 200."""

    def __init__(self, env: Mapping[str, str], name: str = "consumer") -> None:
        self.name = name
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
            "METRICS_PORT": "0",
            "PROMETHEUS_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "ADMIN_TOKEN": uuid.uuid4().hex,
            **env,
        }
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"explainstream-bench-{name}-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        """Spawn the process (returns at once)."""
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "consume"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def ready_now(self) -> bool:
        """Whether ``/ready`` answers 200 right now."""
        url = f"http://127.0.0.1:{self.http_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def admin_stats(self) -> dict[str, Any]:
        """``GET /admin/stats`` (status + engine counters); empty when it does not answer."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/admin/stats",
            headers={"Authorization": f"Bearer {self.env['ADMIN_TOKEN']}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    async def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds from spawn until ``/ready`` answered 200 (model loaded, partitions held)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            if await asyncio.to_thread(self.ready_now):
                return time.perf_counter() - self.started_at
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def rss_bytes(self) -> int | None:
        """Resident set size now (Linux /proc), None when unknown."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    # Under 1 MiB the process is still being exec'd: not a measurement yet.
                    rss = int(line.split()[1]) * 1024
                    return rss if rss >= 2**20 else None
        except OSError:
            return None
        return None

    async def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait, 10)

    def log_tail(self, n: int = 1500) -> str:
        """The end of the process's output."""
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Kill if still running and remove the log file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


def consumer_env(
    bootstrap: str, prefix: str, *, group: str | None = None, **values: Any
) -> dict[str, str]:
    """Environment of a bench consumer: broker, prefix, group plus upper-cased ``values``."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_GROUP_ID": group or f"{prefix}-group",
    }
    env.update({k.upper(): str(v) for k, v in values.items()})
    return env


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
