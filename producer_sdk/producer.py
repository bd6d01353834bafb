"""ExplanationProducer: submit analysis contexts to the tier topics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from producer_sdk import _tracing
from producer_sdk._kafka import guarded, make_producer, start_or_close, warn_unclosed
from producer_sdk._partitioning import PartitionBy, source_partition
from producer_sdk._requests import (
    Deadline,
    build_request,
    new_traceparent,
    request_topic,
    topic_prefix_from_env,
    validate_tier,
    validate_traceparent,
)
from producer_sdk.connection import KafkaConnection
from schemas.codec import Codec
from schemas.errors import EncodeError, ExplainstreamError, ValidationError
from schemas.models import AnalysisContext, ExplanationRequest
from schemas.registry import codec_from_env

__all__ = ["ExplanationProducer"]

ContextLike = AnalysisContext | Mapping[str, Any]


class ExplanationProducer:
    """Publishes ExplanationRequests to ``<prefix>.requests.<tier>``, key = request_id.

    The underlying producer is idempotent with ``acks=all``; every record carries a W3C
    ``traceparent`` header (given or generated). Use ``async with`` or ``start()``/``close()``.
    Its Kafka client id is ``source`` (unless the connection names another), so operators
    can cap one service's produce rate with a Kafka client quota. ``partition_by="source"``
    confines a source's requests to ``source_partitions`` partitions of each tier topic
    (:mod:`producer_sdk._partitioning`); the default spreads them by request_id.
    Requests are validated before anything is sent; problems raise
    :class:`~schemas.errors.ValidationError`, broker problems
    :class:`~schemas.errors.KafkaUnavailable`.
    """

    def __init__(
        self,
        connection: KafkaConnection | None = None,
        *,
        topic_prefix: str = "explain",
        source: str = "unknown",
        codec: Codec | None = None,
        producer_options: Mapping[str, Any] | None = None,
        partition_by: PartitionBy = "request_id",
        source_partitions: int = 1,
    ) -> None:
        if partition_by not in ("request_id", "source"):
            raise ValidationError(
                f"partition_by must be 'request_id' or 'source', not {partition_by!r}"
            )
        if source_partitions < 1:
            raise ValidationError("source_partitions must be at least 1")
        self.connection = connection or KafkaConnection()
        self.topic_prefix = topic_prefix
        self.source = source
        self.partition_by: PartitionBy = partition_by
        self.source_partitions = source_partitions
        self.codec = codec or Codec()
        self._options = dict(producer_options or {})
        self._producer: AIOKafkaProducer | None = None
        self._closed = False

    @classmethod
    def from_env(cls, **kwargs: Any) -> ExplanationProducer:
        """Connection from KAFKA_* variables, the prefix from KAFKA_TOPIC_PREFIX and the
        schema registry from SCHEMA_REGISTRY_* (unset: the embedded ids)."""
        kwargs.setdefault("topic_prefix", topic_prefix_from_env())
        kwargs.setdefault("codec", codec_from_env())
        return cls(KafkaConnection.from_env(), **kwargs)

    async def start(self) -> None:
        """Connect to the cluster (KafkaUnavailable when it cannot be reached)."""
        if self._producer is not None:
            return
        if self._closed:
            raise ExplainstreamError(f"{type(self).__name__} is closed")
        options = {"client_id": self.client_id, **self._options}
        producer = make_producer(self.connection, **options)
        await start_or_close(self.connection, "starting producer", producer)
        self._producer = producer

    async def close(self) -> None:
        """Flush what was sent and disconnect; idempotent."""
        producer, self._producer = self._producer, None
        self._closed = True
        if producer is not None:
            await asyncio.shield(producer.stop())

    stop = close

    @property
    def client_id(self) -> str:
        """The Kafka client id: ``source``, unless the connection sets one of its own."""
        default = KafkaConnection.__dataclass_fields__["client_id"].default
        return self.source if self.connection.client_id == default else self.connection.client_id

    async def __aenter__(self) -> ExplanationProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_producer", None) is not None:
            warn_unclosed(self)

    def build_request(
        self,
        context: ContextLike,
        *,
        max_tokens: int = 200,
        temperature: float = 0.1,
        deadline: Deadline | None = None,
        prompt_profile: str = "default",
        reply_to: str | None = None,
        source: str | None = None,
        request_id: str | None = None,
    ) -> ExplanationRequest:
        """A validated request with this producer's defaults, without sending it."""
        return build_request(
            context,
            max_tokens=max_tokens,
            temperature=temperature,
            deadline=deadline,
            prompt_profile=prompt_profile,
            reply_to=reply_to,
            source=self.source if source is None else source,
            request_id=request_id,
        )

    async def submit(
        self,
        context: ContextLike,
        *,
        priority: str = "normal",
        max_tokens: int = 200,
        temperature: float = 0.1,
        deadline: Deadline | None = None,
        prompt_profile: str = "default",
        reply_to: str | None = None,
        source: str | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Validate, publish to the ``priority`` tier and wait for the ack; returns request_id.

        ``deadline`` is a datetime, a timedelta from now, or milliseconds from now.
        """
        tier = validate_tier(priority)
        request = self.build_request(
            context,
            max_tokens=max_tokens,
            temperature=temperature,
            deadline=deadline,
            prompt_profile=prompt_profile,
            reply_to=reply_to,
            source=source,
            request_id=request_id,
        )
        await self.send_request(request, priority=tier, traceparent=traceparent)
        return request.request_id

    async def submit_many(
        self,
        contexts: Iterable[ContextLike],
        *,
        priority: str = "normal",
        traceparent: str | None = None,
        **options: Any,
    ) -> list[str]:
        """Submit several contexts with the same options; request_ids in input order.

        All contexts are validated before the first is sent, so one bad context sends none.
        """
        tier = validate_tier(priority)
        requests = []
        for index, context in enumerate(contexts):
            try:
                requests.append(self.build_request(context, **options))
            except ValidationError as exc:
                raise ValidationError(f"context #{index}: {exc}") from None
        await self.send_requests(requests, priority=tier, traceparent=traceparent)
        return [r.request_id for r in requests]

    async def send_request(
        self,
        request: ExplanationRequest,
        *,
        priority: str = "normal",
        traceparent: str | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Publish an already built request and wait for its ack."""
        await self.send_requests(
            [request], priority=priority, traceparent=traceparent, headers=headers
        )

    async def send_requests(
        self,
        requests: Sequence[ExplanationRequest],
        *,
        priority: str = "normal",
        traceparent: str | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Publish built requests (pipelined) and wait until every one is acknowledged."""
        topic = request_topic(self.topic_prefix, priority)
        if traceparent is not None:
            validate_traceparent(traceparent)
        # With a registry server: our schema's id, registered once, off the event loop.
        await self.codec.prepare()
        try:
            encoded = [self.codec.encode_request(r) for r in requests]
        except EncodeError as exc:
            raise ValidationError(str(exc)) from exc
        producer = self._require()
        partitions: list[int] = []
        if self.partition_by == "source":
            found = await guarded(
                self.connection, f"reading partitions of {topic}", producer.partitions_for(topic)
            )
            partitions = sorted(found or ())
        spans = _tracing.send_spans(topic, requests, traceparent)
        futures = []
        try:
            for i, (request, value) in enumerate(zip(requests, encoded, strict=True)):
                header = spans[i][1] if spans else (traceparent or new_traceparent())
                record_headers = [("traceparent", header.encode()), *headers]
                futures.append(
                    await guarded(
                        self.connection,
                        f"sending to {topic}",
                        producer.send(
                            topic,
                            value=value,
                            key=request.request_id.encode(),
                            headers=record_headers,
                            partition=self._partition(request, partitions),
                        ),
                    )
                )
            for future in futures:
                await guarded(self.connection, f"delivering to {topic}", future)
        except BaseException as exc:
            for span, _ in spans:
                _tracing.end_span(span, exc)
            raise
        for span, _ in spans:
            _tracing.end_span(span)

    def _partition(self, request: ExplanationRequest, partitions: list[int]) -> int | None:
        if self.partition_by != "source" or not partitions:
            return None  # the key's partition (murmur2 of request_id)
        return source_partition(
            request.source, request.request_id, partitions, self.source_partitions
        )

    async def flush(self) -> None:
        """Wait until everything sent so far is acknowledged."""
        producer = self._require()
        await guarded(self.connection, "flushing", producer.flush())

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise ExplainstreamError(
                f"{type(self).__name__} is not started: use 'async with' or await start()"
            )
        return self._producer
