"""``explainstream demo``: the main job on embedded defaults, one command.

Starts a real local Apache Kafka (unless KAFKA_BOOTSTRAP_SERVERS is set), creates the topics,
runs the consumer with the llama engine and the bundled SmolLM2 model, publishes sample
analysis contexts to every tier, prints each result as it arrives, then shuts down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumer.config import Settings
from consumer.kafka.topics import ensure_service_topics, settings_connection
from schemas.codec import Codec
from schemas.models import AnalysisContext, ExplanationRequest

__all__ = ["SAMPLE_CONTEXTS", "register", "run_demo"]

#: (tier, context) pairs covering the kinds of analysis upstream services publish.
SAMPLE_CONTEXTS: list[tuple[str, dict[str, Any]]] = [
    (
        "urgent",
        {
            "analysis_type": "sentiment",
            "symbol": "AAPL",
            "metrics": {"sentiment_score": -0.72, "current_price": 187.4, "iv_rank": 81.0},
            "attributes": {"headline": "Supplier warns on iPhone demand"},
        },
    ),
    (
        "high",
        {
            "analysis_type": "options_flow",
            "symbol": "NVDA",
            "metrics": {"call_put_ratio": 2.4, "current_price": 131.2, "iv_rank": 64.0},
            "attributes": {"expiry": "2026-12-18"},
        },
    ),
    (
        "normal",
        {
            "analysis_type": "earnings",
            "symbol": "MSFT",
            "metrics": {"eps_surprise_pct": 6.1, "current_price": 415.0, "iv_rank": 35.0},
        },
    ),
    (
        "low",
        {
            "analysis_type": "sentiment",
            "symbol": "TSLA",
            "metrics": {"sentiment_score": 0.31, "current_price": 242.9, "iv_rank": 48.0},
            "attributes": {"sector": "autos"},
        },
    ),
]


async def run_demo(
    settings: Settings, *, count: int, max_tokens: int, out: Any = sys.stdout
) -> int:
    """Run consumer + sample producer against ``settings``' broker; returns results seen."""
    from consumer.runtime.service import ConsumerService

    await ensure_service_topics(settings)
    codec = Codec()
    conn = settings_connection(settings).aiokafka_kwargs()
    reader = AIOKafkaConsumer(
        settings.results_topic, **conn, auto_offset_reset="latest", enable_auto_commit=False
    )
    await reader.start()
    await reader.getmany(timeout_ms=100)  # establish the position at the end
    for tp in reader.assignment():
        await reader.position(tp)
    seen = 0
    try:
        async with ConsumerService(settings) as service:
            print(
                f"consumer up: engine={service.engine.name} "
                f"model={service.engine.model_info().model_name} "
                f"slots={service.engine.slots} http=:{service.http_port}",
                file=sys.stderr,
            )
            producer = AIOKafkaProducer(**conn, acks="all", enable_idempotence=True)
            await producer.start()
            try:
                for i in range(count):
                    tier, ctx = SAMPLE_CONTEXTS[i % len(SAMPLE_CONTEXTS)]
                    request = ExplanationRequest(
                        context=AnalysisContext(**ctx), max_tokens=max_tokens, source="demo"
                    )
                    await producer.send_and_wait(
                        settings.request_topics()[tier],
                        codec.encode_request(request),
                        key=request.request_id.encode(),
                    )
            finally:
                await producer.stop()
            deadline = time.monotonic() + 300
            while seen < count and time.monotonic() < deadline:
                batch = await reader.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        result = codec.decode_result(record.value)
                        seen += 1
                        line = {
                            "tier": result.tier,
                            "status": result.status.value,
                            "latency_ms": round(result.queue_time_ms + result.processing_time_ms),
                            "tokens": result.completion_tokens,
                            "confidence": None
                            if result.confidence_score is None
                            else round(result.confidence_score, 3),
                            "grounding": None
                            if result.grounding is None
                            else result.grounding.model_dump(mode="json"),
                            "explanation": result.explanation or result.error,
                        }
                        print(json.dumps(line), file=out, flush=True)
    finally:
        await reader.stop()
    return seen


def _cmd(args: argparse.Namespace) -> int:
    from consumer.dev.localkafka import local_run_settings

    overrides: dict[str, Any] = {"engine": args.engine} if args.engine else {}
    with local_run_settings("demo", **overrides) as settings:
        seen = asyncio.run(run_demo(settings, count=args.count, max_tokens=args.max_tokens))
    print(f"{seen}/{args.count} results", file=sys.stderr)
    return 0 if seen == args.count else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = subparsers.add_parser("demo", help="run the whole pipeline locally on embedded defaults")
    p.add_argument("--count", type=int, default=8, help="sample requests to publish")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--engine", choices=["llama", "sequential", "fake"], default=None)
    p.set_defaults(func=_cmd)
