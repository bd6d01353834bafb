"""``explainstream bench pipeline``: what Kafka, Avro and the service loop add to the engine.

A backlog of ``--requests`` requests (greedy, the bench contexts over both profiles) is
published to the normal tier; a consumer is started and the clock runs from the moment it is
ready (model loaded and warm, partitions assigned) until the last result is read back from
the results topic.
With the llama engine the same requests first run straight through a second engine instance
(``--concurrency`` = MAX_CONCURRENT_REQUESTS in flight, no Kafka), so the report has the
pipeline's tokens/s as a fraction of the bare engine's, measured side by side. With the fake
engine at zero latency the figure is the service's own ceiling in results/s per consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from typing import Any

from consumer.dev.bench import BENCH_CONTEXTS, bench_one, percentile

__all__ = ["register", "run_pipeline_bench"]


async def _engine_only(settings: Any, n: int, max_tokens: int) -> dict[str, float]:
    from consumer.engines import create_engine

    engine = create_engine(settings)
    await engine.start()
    try:
        await engine.warmup()
        # The same greedy requests the pipeline gets: end-of-generation is honoured there.
        run = await bench_one(
            engine, settings.max_concurrent_requests, n, max_tokens, 0.0, ignore_eos=False
        )
    finally:
        await engine.stop()
    return {
        "wall_s": run.wall_s,
        "tokens_per_s": run.tokens_per_s,
        "results_per_s": run.explanations_per_min / 60.0,
    }


async def _through_kafka(settings: Any, n: int, max_tokens: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from consumer.runtime.service import ConsumerService
    from consumer.kafka.topics import ensure_service_topics, settings_connection
    from schemas.codec import Codec
    from schemas.models import AnalysisContext, ExplanationRequest

    await ensure_service_topics(settings)
    codec = Codec()
    conn = settings_connection(settings).aiokafka_kwargs()
    producer = AIOKafkaProducer(**conn, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        topic = settings.request_topics()["normal"]
        sends = []
        for i in range(n):
            profile, context = BENCH_CONTEXTS[i % len(BENCH_CONTEXTS)]
            request = ExplanationRequest(
                context=AnalysisContext(**context),
                max_tokens=max_tokens,
                temperature=0.0,
                prompt_profile=profile,
                source="bench",
            )
            sends.append(
                await producer.send(
                    topic, codec.encode_request(request), key=request.request_id.encode()
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(
        settings.results_topic, **conn, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await reader.start()
    processing: list[float] = []
    tokens = 0
    statuses: dict[str, int] = {}
    try:
        async with ConsumerService(settings) as service:
            # The clock starts once the group has assigned the partitions: joining is a
            # one-off start-up cost (reported apart), not a per-request overhead.
            up = time.perf_counter()
            await service.wait_assigned()
            t0 = time.perf_counter()
            join_s = t0 - up
            while len(processing) < n:
                batch = await reader.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        result = codec.decode_result(record.value)
                        statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
                        processing.append(result.processing_time_ms / 1000.0)
                        tokens += result.completion_tokens
                if time.perf_counter() - t0 > 3600:
                    raise TimeoutError(f"only {len(processing)}/{n} results within an hour")
            wall = time.perf_counter() - t0
    finally:
        await reader.stop()
    return {
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "results_per_s": n / wall,
        "p50_processing_s": percentile(processing, 50),
        "p95_processing_s": percentile(processing, 95),
        "statuses": statuses,
        "group_join_s": join_s,
    }


async def run_pipeline_bench(
    settings: Any, *, requests: int, max_tokens: int, baseline: bool = True
) -> dict[str, Any]:
    """Engine alone (unless fake or ``baseline`` is off), then the same work through Kafka."""
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "engine": settings.engine.value,
        "requests": requests,
        "max_tokens": max_tokens,
        "concurrency": settings.max_concurrent_requests,
        "delivery": settings.delivery.value,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    if baseline and settings.engine.value != "fake":
        report["engine_only"] = await _engine_only(settings, requests, max_tokens)
    report["pipeline"] = await _through_kafka(settings, requests, max_tokens)
    if "engine_only" in report:
        report["pipeline_over_engine_tokens_per_s"] = (
            report["pipeline"]["tokens_per_s"] / report["engine_only"]["tokens_per_s"]
        )
    return report


def _format(report: dict[str, Any]) -> str:
    p = report["pipeline"]
    lines = [
        f"engine={report['engine']} concurrency={report['concurrency']} "
        f"requests={report['requests']} max_tokens={report['max_tokens']} "
        f"delivery={report['delivery']}",
        f"through Kafka: {p['results_per_s']:.1f} results/s, {p['tokens_per_s']:.1f} tokens/s, "
        f"processing p50 {p['p50_processing_s'] * 1000:.1f} ms / "
        f"p95 {p['p95_processing_s'] * 1000:.1f} ms, statuses {p['statuses']} "
        f"(group join {p['group_join_s']:.2f} s, not counted)",
    ]
    if "engine_only" in report:
        e = report["engine_only"]
        lines.append(
            f"engine alone:  {e['results_per_s']:.1f} results/s, {e['tokens_per_s']:.1f} tokens/s"
        )
        lines.append(
            f"pipeline / engine tokens/s: {report['pipeline_over_engine_tokens_per_s']:.3f}"
        )
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    from consumer.dev.devbroker import local_run_settings

    overrides: dict[str, Any] = {
        "engine": args.engine,
        "prometheus_enabled": False,
        "kafka_topic_prefix": f"bench{int(time.time())}",
        "max_queue_size": args.max_queue_size,
        "max_concurrent_requests": args.concurrency,
        "request_timeout": 3600.0,
    }
    if args.model_path:
        overrides["model_path"] = args.model_path
    with local_run_settings("bench", **overrides) as settings:
        report = asyncio.run(
            run_pipeline_bench(
                settings,
                requests=args.requests,
                max_tokens=args.max_tokens,
                baseline=not args.no_baseline,
            )
        )
    print(json.dumps(report) if args.json else _format(report))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench pipeline`` to the ``bench`` subcommands."""
    p = sub.add_parser(
        "pipeline", help="the service through real Kafka vs the engine alone (overhead)"
    )
    p.add_argument("--engine", choices=["llama", "sequential", "fake"], default="fake")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8, help="MAX_CONCURRENT_REQUESTS")
    p.add_argument("--max-queue-size", type=int, default=256, help="MAX_QUEUE_SIZE")
    p.add_argument("--model-path", default=None)
    p.add_argument("--no-baseline", action="store_true", help="skip the engine-alone phase")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd)
