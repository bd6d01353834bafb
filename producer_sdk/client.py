"""ExplanationClient: request/reply over Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from producer_sdk import _tracing
from producer_sdk._kafka import (
    guarded,
    make_consumer,
    partitions_of,
    start_or_close,
    warn_unclosed,
)
from producer_sdk._requests import Deadline, topic_prefix_from_env, validate_tier
from producer_sdk._unreadable import UnreadableRecords
from producer_sdk.connection import KafkaConnection
from producer_sdk.producer import ContextLike, ExplanationProducer
from producer_sdk.results import ResultsReader
from schemas.codec import Codec
from schemas.errors import DecodeError, ExplainstreamError, ExplainTimeout, KafkaUnavailable
from schemas.models import ExplanationResult
from schemas.registry import codec_from_env, resolve_waiting

__all__ = ["ExplanationClient"]

log = logging.getLogger(__name__)


class ExplanationClient:
    """Submit a context and await its ExplanationResult.

    At start the client assigns itself every partition of the results topic (or of the
    dedicated ``reply_to`` topic, which must exist), without a consumer group, and
    resolves its position at the end, so every result of a request sent afterwards is
    seen. A background task routes results by request_id to the waiting callers.
    """

    def __init__(
        self,
        connection: KafkaConnection | None = None,
        *,
        topic_prefix: str = "explain",
        reply_to: str | None = None,
        source: str = "unknown",
        codec: Codec | None = None,
        default_timeout_s: float = 30.0,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.connection = connection or KafkaConnection()
        self.topic_prefix = topic_prefix
        self.reply_to = reply_to
        self.reply_topic = reply_to or f"{topic_prefix}.results"
        self.default_timeout_s = default_timeout_s
        self.codec = codec or Codec()
        self.producer = ExplanationProducer(
            self.connection,
            topic_prefix=topic_prefix,
            source=source,
            codec=self.codec,
            producer_options=producer_options,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._router: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[ExplanationResult]] = {}
        self._failure: ExplainstreamError | None = None
        self._unreadable: UnreadableRecords | None = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> ExplanationClient:
        """Connection from KAFKA_* variables, the prefix from KAFKA_TOPIC_PREFIX and the
        schema registry from SCHEMA_REGISTRY_* (unset: the embedded ids)."""
        kwargs.setdefault("topic_prefix", topic_prefix_from_env())
        kwargs.setdefault("codec", codec_from_env())
        return cls(KafkaConnection.from_env(), **kwargs)

    async def start(self) -> None:
        """Connect the producer and the reply listener (positioned at the end)."""
        if self._consumer is not None:
            return
        consumer = make_consumer(self.connection, group_id=None, auto_offset_reset="latest")
        await start_or_close(self.connection, "starting reply listener", consumer)
        self._consumer = consumer
        try:
            partitions = await partitions_of(self.connection, consumer, self.reply_topic)
            tps = [TopicPartition(self.reply_topic, p) for p in partitions]
            consumer.assign(tps)
            await guarded(self.connection, "seeking", consumer.seek_to_end(*tps))
            self._unreadable = UnreadableRecords(consumer)
            for tp in tps:
                position = await guarded(self.connection, "positioning", consumer.position(tp))
                self._unreadable.took(tp, position)
            await self.producer.start()
        except BaseException:
            await self.close()
            raise
        self._router = asyncio.create_task(self._route(consumer), name="explain-reply-router")
        self._router.add_done_callback(self._router_ended)

    @property
    def listening(self) -> bool:
        """The reply listener is running (False once it failed or died: start a new client)."""
        return self._router is not None and not self._router.done() and self._failure is None

    def _router_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._failure is not None:
            return
        exc = task.exception()
        log.error("reply listener died: %r", exc)
        self._failure = KafkaUnavailable(f"reply listener died: {exc!r}")
        self._fail_pending(self._failure)

    async def close(self) -> None:
        """Stop listening, fail waiting callers, disconnect; idempotent."""
        router, self._router = self._router, None
        if router is not None:
            router.cancel()
            # A router that died was reported by _router_ended already.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await router
        self._fail_pending(ExplainstreamError("client closed"))
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        await self.producer.close()

    async def __aenter__(self) -> ExplanationClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_consumer", None) is not None:
            warn_unclosed(self)

    async def explain(
        self,
        context: ContextLike,
        *,
        priority: str = "normal",
        timeout_s: float | None = None,
        max_tokens: int = 200,
        temperature: float = 0.1,
        deadline: Deadline | None = None,
        prompt_profile: str = "default",
        source: str | None = None,
        traceparent: str | None = None,
    ) -> ExplanationResult:
        """Submit ``context`` and return its result (any status: check ``result.status``).

        Raises ExplainTimeout when no result arrives within ``timeout_s`` (default
        ``default_timeout_s``). Without an explicit ``deadline`` the request's deadline is
        the timeout, so the service does not spend work on an answer nobody awaits.
        """
        if self._consumer is None or self._router is None:
            raise ExplainstreamError("ExplanationClient is not started: use 'async with'")
        if self._failure is not None:
            raise self._failure
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        tier = validate_tier(priority)
        request = self.producer.build_request(
            context,
            max_tokens=max_tokens,
            temperature=temperature,
            deadline=deadline if deadline is not None else timedelta(seconds=timeout),
            prompt_profile=prompt_profile,
            reply_to=self.reply_to,
            source=source,
        )
        future: asyncio.Future[ExplanationResult] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        # With tracing on, one span covers the round trip and parents the request's.
        span = _tracing.explain_span(request, tier, traceparent)
        parent = traceparent if span is None else _tracing.traceparent_of(span)
        error: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):
                await self.producer.send_request(request, priority=tier, traceparent=parent)
                result = await future
            if span is not None:
                span.set_attribute("explainstream.status", result.status.value)
            return result
        except TimeoutError:
            error = ExplainTimeout(
                f"no result for request {request.request_id} within {timeout:g}s"
            )
            raise error from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._pending.pop(request.request_id, None)
            if span is not None:
                _tracing.end_span(span, error)

    def results(self, **options: Any) -> ResultsReader:
        """A ResultsReader on this client's connection and prefix."""
        options.setdefault("topic_prefix", self.topic_prefix)
        return ResultsReader(self.connection, codec=self.codec, **options)

    async def _route(self, consumer: AIOKafkaConsumer) -> None:
        failures = 0
        unreadable = self._unreadable
        assert unreadable is not None  # set in start() before the router
        while True:
            assigned = list(consumer.assignment())
            careful = unreadable.pick(assigned)
            try:
                if careful is not None:
                    batches = await consumer.getmany(careful, timeout_ms=200, max_records=1)
                    if not batches.get(careful):
                        unreadable.caught_up(careful)
                else:
                    batches = await consumer.getmany(timeout_ms=200)
                failures = 0
            except KafkaError as exc:
                failures += 1
                log.warning("reply listener: %s (attempt %d)", exc, failures)
                if failures >= 10:
                    self._failure = KafkaUnavailable(f"reply listener failed: {exc}")
                    self._fail_pending(self._failure)
                    return
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))
                continue
            except Exception as exc:  # a record the client cannot parse: find it, skip it
                if careful is None:
                    await unreadable.rewind(assigned, exc)
                elif (ref := unreadable.failed(careful)) is not None:
                    log.warning(
                        "reply listener: skipped unreadable %s@%d: %r", careful, ref.offset, exc
                    )
                    unreadable.took(careful, ref.offset + 1)
                continue
            for tp, records in batches.items():
                for record in records:
                    await self._deliver(record.key, record.value)
                    unreadable.took(tp, record.offset + 1)

    async def _deliver(self, key: bytes | None, value: bytes | None) -> None:
        if not self._pending:
            return
        request_id = key.decode("utf-8", "replace") if key else None
        future = self._pending.get(request_id) if request_id else None
        if future is None or future.done():
            return
        try:
            # A registry outage holds the record (bounded); the caller's timeout still runs.
            await resolve_waiting(self.codec, value, give_up_s=self.default_timeout_s)
            result = self.codec.decode_result(value)
        except DecodeError as exc:
            log.warning("undecodable result for %s: %s", request_id, exc)
            return
        # The caller may have timed out while the schema was resolved.
        if result.request_id == request_id and not future.done():
            future.set_result(result)

    def _fail_pending(self, error: ExplainstreamError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
