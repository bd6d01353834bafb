"""Urgent latency alone vs under a low-tier backlog (issue 9, defect 9): a benchmark, not a test.

``python -m consumer.dev.bench_priority [--engine llama] [--slots 8] [--urgent 20]
[--backlog 120]`` runs one consumer on the local broker twice, on fresh topics each time:
first an urgent stream alone (one request every ``--interval`` seconds), then the same
stream while ``--backlog`` low requests are queued before it, then that again with the
dispatcher's urgent overcommit switched off (the previous behaviour), side by side.
Latency is measured by the client, from publishing a request to reading its result.
Prints p50/p95 per phase, their ratio and the engine's preemption count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from consumer.dev.bench import BENCH_CONTEXTS, percentile

__all__ = ["run_priority_bench"]


async def _phase(
    settings: Any, urgent: int, backlog: int, interval_s: float, overcommit: bool = True
) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from consumer.kafka.topics import ensure_service_topics, settings_connection
    from consumer.runtime.service import ConsumerService
    from schemas.codec import Codec
    from schemas.models import AnalysisContext, ExplanationRequest

    await ensure_service_topics(settings)
    codec = Codec()
    conn = settings_connection(settings).aiokafka_kwargs()

    def request(i: int, max_tokens: int) -> ExplanationRequest:
        profile, context = BENCH_CONTEXTS[i % len(BENCH_CONTEXTS)]
        return ExplanationRequest(
            context=AnalysisContext(**context),
            max_tokens=max_tokens,
            temperature=0.0,
            prompt_profile=profile,
            source="bench-priority",
        )

    producer = AIOKafkaProducer(**conn, acks="all", linger_ms=1)
    await producer.start()
    reader = AIOKafkaConsumer(
        settings.results_topic, **conn, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await reader.start()
    sent: dict[str, float] = {}
    latency: list[float] = []
    try:
        topics = settings.request_topics()
        for i in range(backlog):
            r = request(i, 128)
            await producer.send(topics["low"], codec.encode_request(r), key=r.request_id.encode())
        await producer.flush()
        async with ConsumerService(settings) as service:
            await service.wait_assigned()
            if not overcommit and service.dispatcher is not None:
                service.dispatcher._overcommit = 0  # the old dispatcher, for comparison

            async def stream() -> None:
                for i in range(urgent):
                    r = request(i, 64)
                    sent[r.request_id] = time.perf_counter()
                    await producer.send_and_wait(
                        topics["urgent"], codec.encode_request(r), key=r.request_id.encode()
                    )
                    await asyncio.sleep(interval_s)

            streaming = asyncio.create_task(stream())
            deadline = time.perf_counter() + 1800
            while len(latency) < urgent and time.perf_counter() < deadline:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    now = time.perf_counter()
                    for record in records:
                        result = codec.decode_result(record.value)
                        if result.request_id in sent:
                            latency.append(now - sent[result.request_id])
            await streaming
            stats = service.engine.stats()
    finally:
        await reader.stop()
        await producer.stop()
    return {
        "urgent": len(latency),
        "p50_s": round(percentile(latency, 50), 3),
        "p95_s": round(percentile(latency, 95), 3),
        "preemptions": stats.get("preemptions"),
    }


async def run_priority_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Both phases on one local broker; returns the figures."""
    from consumer.dev.devbroker import local_run_settings

    out: dict[str, Any] = {}
    with local_run_settings(
        "bench-priority",
        engine=args.engine,
        max_concurrent_requests=args.slots,
        max_queue_size=max(64, 4 * args.slots),
        prometheus_enabled=False,
    ) as base:
        phases = (
            ("alone", 0, True),
            ("under_backlog", args.backlog, True),
            ("under_backlog_no_overcommit", args.backlog, False),
        )
        for name, backlog, overcommit in phases:
            prefix = f"bprio{uuid.uuid4().hex[:8]}"
            settings = base.model_copy(
                update={"kafka_topic_prefix": prefix, "kafka_group_id": f"{prefix}-group"}
            )
            out[name] = await _phase(settings, args.urgent, backlog, args.interval, overcommit)
    alone = out["alone"]["p95_s"]
    for name in ("under_backlog", "under_backlog_no_overcommit"):
        out[f"{name}_p95_ratio"] = round(out[name]["p95_s"] / alone, 2) if alone else None
    return out


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="llama")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--urgent", type=int, default=20)
    p.add_argument("--backlog", type=int, default=120)
    p.add_argument("--interval", type=float, default=0.5)
    print(json.dumps(asyncio.run(run_priority_bench(p.parse_args())), indent=2))


if __name__ == "__main__":
    main()
