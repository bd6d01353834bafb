"""Client commands: ``produce``, ``explain`` and ``results`` (base install only).

Connection from KAFKA_BOOTSTRAP_SERVERS / KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* /
KAFKA_SSL_CAFILE, topics from KAFKA_TOPIC_PREFIX, schema ids from SCHEMA_REGISTRY_* (unset:
the embedded registry). Errors are raised as our own exceptions;
``consumer.cli.main`` prints them as one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from producer_sdk._requests import TIERS, topic_prefix_from_env
from producer_sdk.client import ExplanationClient
from producer_sdk.connection import KafkaConnection
from producer_sdk.producer import ExplanationProducer
from producer_sdk.results import ResultsReader
from schemas.codec import Codec
from schemas.errors import ValidationError
from schemas.models import ExplanationResult, ResultStatus
from schemas.registry import codec_from_env

__all__ = ["iter_contexts", "register", "result_json"]

_CHUNK = 1000


def result_json(result: ExplanationResult) -> str:
    """One JSON object with ExplanationResult's field names."""
    return json.dumps(result.model_dump(mode="json"), separators=(",", ":"))


def _parse_context(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def iter_contexts(stream: TextIO, name: str) -> Iterator[dict[str, Any]]:
    """JSON objects from a JSON-lines stream; blank lines are skipped."""
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield _parse_context(line, f"{name}:{number}")


def _connection() -> tuple[KafkaConnection, str, Codec]:
    # aiokafka logs each failed connection attempt; the CLI reports failure once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return KafkaConnection.from_env(), topic_prefix_from_env(), codec_from_env()


def _read_contexts(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.context is not None:
        return [_parse_context(args.context, "--context")]
    if args.file == "-":
        return list(iter_contexts(sys.stdin, "<stdin>"))
    try:
        with open(args.file, encoding="utf-8") as stream:
            return list(iter_contexts(stream, args.file))
    except OSError as exc:
        raise ValidationError(f"--file: {exc.strerror}: {args.file}") from None


def _produce(args: argparse.Namespace) -> int:
    contexts = _read_contexts(args)
    conn, prefix, codec = _connection()
    options: dict[str, Any] = {
        "priority": args.priority,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "deadline": args.deadline_ms,
        "prompt_profile": args.prompt_profile,
        "reply_to": args.reply_to,
    }

    async def run() -> None:
        producer = ExplanationProducer(
            conn,
            topic_prefix=prefix,
            source=args.source,
            codec=codec,
            partition_by=args.partition_by,
            source_partitions=args.source_partitions,
        )
        # Validate every context before connecting, so a bad line sends nothing.
        for index, context in enumerate(contexts):
            try:
                producer.build_request(
                    context,
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                    deadline=args.deadline_ms,
                    prompt_profile=args.prompt_profile,
                    reply_to=args.reply_to,
                )
            except ValidationError as exc:
                where = (
                    "--context"
                    if args.context is not None
                    else f"{args.file}: context #{index + 1}"
                )
                raise ValidationError(f"{where}: {exc}") from None
        async with producer:
            for start in range(0, len(contexts), _CHUNK):
                ids = await producer.submit_many(contexts[start : start + _CHUNK], **options)
                sys.stdout.write("".join(f"{i}\n" for i in ids))
                sys.stdout.flush()

    asyncio.run(run())
    return 0


def _explain(args: argparse.Namespace) -> int:
    context = _parse_context(args.context, "--context")
    conn, prefix, codec = _connection()

    async def run() -> ExplanationResult:
        client = ExplanationClient(conn, topic_prefix=prefix, source=args.source, codec=codec)
        async with client:
            return await client.explain(
                context,
                priority=args.priority,
                timeout_s=args.timeout,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                prompt_profile=args.prompt_profile,
            )

    result = asyncio.run(run())
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    return 0 if result.status is ResultStatus.OK else 1


def _results(args: argparse.Namespace) -> int:
    conn, prefix, codec = _connection()

    async def run() -> None:
        reader = ResultsReader(
            conn,
            topic_prefix=prefix,
            topic=args.topic,
            from_beginning=args.from_beginning,
            follow=args.follow,
            group_id=args.group,
            max_results=args.max,
            codec=codec,
        )
        async with reader:
            async for result in reader:
                sys.stdout.write(result_json(result) + "\n")
                sys.stdout.flush()

    try:
        asyncio.run(run())
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``produce``, ``explain`` and ``results``."""
    produce = subparsers.add_parser(
        "produce", help="submit analysis contexts; prints one request_id per line"
    )
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="one AnalysisContext as JSON")
    source.add_argument("--file", help="JSON lines of AnalysisContexts ('-' for stdin)")
    _request_options(produce)
    produce.add_argument(
        "--deadline-ms", type=_positive_int, default=None, help="deadline N ms from now"
    )
    produce.add_argument("--reply-to", default=None, help="topic for the results")
    produce.add_argument(
        "--partition-by",
        choices=["request_id", "source"],
        default="request_id",
        help="source: keep this source's requests in --source-partitions partitions per tier",
    )
    produce.add_argument(
        "--source-partitions",
        type=_positive_int,
        default=1,
        help="with --partition-by source: how many partitions the source spreads over",
    )
    produce.set_defaults(func=_produce)

    explain = subparsers.add_parser("explain", help="submit one context and print its result")
    explain.add_argument("--context", required=True, help="one AnalysisContext as JSON")
    _request_options(explain)
    explain.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    explain.set_defaults(func=_explain)

    results = subparsers.add_parser("results", help="print results as JSON lines")
    results.add_argument("--from-beginning", action="store_true", help="start at the earliest")
    results.add_argument("--follow", action="store_true", help="keep waiting for new results")
    results.add_argument("--max", type=_positive_int, default=None, help="stop after N results")
    results.add_argument("--group", default=None, help="consumer group (commits progress)")
    results.add_argument("--topic", default=None, help="results topic (default <prefix>.results)")
    results.set_defaults(func=_results)


def _request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=TIERS, default="normal")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--prompt-profile", default="default")
    parser.add_argument("--source", default="explainstream-cli")
