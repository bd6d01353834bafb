"""HTTP gateway: the old service's ``POST /explain`` and ``POST /explain/batch`` over Kafka.

Request JSON as the old "Llama 2-7B Explanation Service" took it: ``{context, max_tokens,
temperature, priority}``, where ``context`` is either the old flat object
(``{"analysis_type": "sentiment", "symbol": "AAPL", "sentiment_score": 0.75, ...}``: numbers
become metrics, strings and booleans attributes) or an AnalysisContext
(``{analysis_type, symbol, metrics, attributes, as_of}``). Response JSON is the old shape
``{explanation, tokens_used, processing_time_ms, model_info, confidence_score}`` plus
``request_id`` and ``status``.

Status codes: 400 body is not JSON, 422 invalid input (FastAPI-style ``detail`` list),
429 over GATEWAY_RATE_LIMIT (with ``Retry-After``; :mod:`consumer.edge.limits`),
504 no result in time or the request EXPIRED, 502 the service FAILED, 503 Kafka unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from consumer.edge.limits import GatewayLimiter
from producer_sdk._requests import TIERS, topic_prefix_from_env, validate_traceparent
from producer_sdk.client import ExplanationClient
from producer_sdk.connection import KafkaConnection
from schemas.codec import Codec
from schemas.errors import (
    ConfigError,
    ExplainstreamError,
    ExplainTimeout,
    KafkaUnavailable,
    ValidationError,
)
from schemas.models import AnalysisContext, ExplanationResult, ResultStatus
from schemas.registry import codec_from_env

__all__ = ["GatewayRequest", "create_app", "old_context", "old_response", "register", "serve"]

log = logging.getLogger(__name__)

#: The old service's MAX_BATCH_SIZE default.
MAX_BATCH = 32
_STRUCTURED_KEYS = {"analysis_type", "symbol", "metrics", "attributes", "as_of"}


class GatewayRequest(BaseModel):
    """One request body of the old API (unknown top-level keys are ignored, as before)."""

    model_config = ConfigDict(extra="ignore")

    context: dict[str, Any]
    max_tokens: int = Field(200, ge=1, le=8192)
    temperature: float = Field(0.1, ge=0.0, le=2.0)
    priority: str = "normal"
    prompt_profile: str = "default"
    system_prompt: None = Field(
        None, description="Refused when set: the service runs named prompt profiles only."
    )

    @field_validator("priority")
    @classmethod
    def _tier(cls, value: str) -> str:
        tier = value.strip().lower()
        if tier not in TIERS:
            raise ValueError(f"must be one of {', '.join(TIERS)}")
        return tier


class _Invalid(Exception):
    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail


def _details(exc: pydantic.ValidationError, prefix: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def old_context(context: dict[str, Any]) -> AnalysisContext:
    """An AnalysisContext from the old flat context or from the structured form."""
    if "metrics" in context or "attributes" in context or set(context) <= _STRUCTURED_KEYS:
        return AnalysisContext.model_validate(
            {**context, "analysis_type": context.get("analysis_type", "general")}
        )
    metrics: dict[str, float] = {}
    attributes: dict[str, str] = {}
    for key, value in context.items():
        if key in _STRUCTURED_KEYS or value is None:
            continue
        if isinstance(value, bool):
            attributes[key] = "true" if value else "false"
        elif isinstance(value, (int, float)):
            metrics[key] = float(value)
        elif isinstance(value, str):
            attributes[key] = value
        else:
            raise ValueError(f"{key}: nested {type(value).__name__} values are not supported")
    return AnalysisContext.model_validate(
        {
            "analysis_type": context.get("analysis_type", "general"),
            "symbol": context.get("symbol"),
            "as_of": context.get("as_of"),
            "metrics": metrics,
            "attributes": attributes,
        }
    )


def parse_item(item: Any, prefix: tuple[Any, ...]) -> tuple[GatewayRequest, AnalysisContext]:
    """Validate one old-API request body; _Invalid with FastAPI-style details."""
    try:
        request = GatewayRequest.model_validate(item)
    except pydantic.ValidationError as exc:
        raise _Invalid(_details(exc, prefix)) from None
    try:
        context = old_context(request.context)
    except pydantic.ValidationError as exc:
        raise _Invalid(_details(exc, (*prefix, "context"))) from None
    except ValueError as exc:
        loc = [*prefix, "context", str(exc).split(":")[0]]
        raise _Invalid([{"loc": loc, "msg": str(exc), "type": "value_error"}]) from None
    return request, context


def old_response(result: ExplanationResult) -> dict[str, Any]:
    """The old service's response JSON for a result."""
    body: dict[str, Any] = {
        "explanation": result.explanation,
        "tokens_used": result.completion_tokens,
        "processing_time_ms": round(result.processing_time_ms),
        "model_info": result.model_info.model_dump(),
        "confidence_score": result.confidence_score,
        "grounding": None if result.grounding is None else result.grounding.model_dump(mode="json"),
        "request_id": result.request_id,
        "status": result.status.value,
    }
    if result.status is not ResultStatus.OK:
        body["error"] = result.error
    return body


_STATUS_CODES = {
    ResultStatus.OK: 200,
    ResultStatus.REJECTED: 422,
    ResultStatus.EXPIRED: 504,
    ResultStatus.FAILED: 502,
}


class _Bridge:
    """Owns the ExplanationClient; (re)starts it lazily so the gateway outlives Kafka outages."""

    def __init__(self, factory: Callable[[], ExplanationClient], retry_s: float = 2.0) -> None:
        self._factory = factory
        self._retry_s = retry_s
        self._client: ExplanationClient | None = None
        self._last_failure: tuple[float, KafkaUnavailable] | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.listening

    @property
    def listener_down(self) -> bool:
        return self._client is not None and not self._client.listening

    async def client(self) -> ExplanationClient:
        if self._client is not None and self._client.listening:
            return self._client
        async with self._lock:
            if self._client is not None and self._client.listening:
                return self._client
            if self._client is not None:  # its reply listener died: start a new one
                log.warning("gateway: the reply listener stopped; restarting the client")
                await self.reset()
            if self._last_failure and time.monotonic() - self._last_failure[0] < self._retry_s:
                raise self._last_failure[1]
            client = self._factory()
            try:
                await client.start()
            except KafkaUnavailable as exc:
                self._last_failure = (time.monotonic(), exc)
                raise
            self._client, self._last_failure = client, None
            return client

    async def reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def close(self) -> None:
        await self.reset()


def caller_trace(http: web.Request) -> str | None:
    """The caller's W3C ``traceparent``, so its trace continues through Kafka; an invalid
    one is ignored (W3C: the receiver then starts a trace of its own)."""
    value = http.headers.get("traceparent")
    if value is None:
        return None
    try:
        return validate_traceparent(value.strip().lower())
    except ValidationError:
        return None


def create_app(
    factory: Callable[[], ExplanationClient],
    *,
    timeout_s: float = 30.0,
    max_batch: int = MAX_BATCH,
    limiter: GatewayLimiter | None = None,
) -> web.Application:
    """The gateway application; ``factory`` builds the (not yet started) ExplanationClient;
    ``limiter`` (default: no limit) charges each request to its client."""
    bridge = _Bridge(factory)
    limits = limiter or GatewayLimiter(None)
    app = web.Application(client_max_size=1024 * 1024)

    async def explain_one(
        request: GatewayRequest, context: AnalysisContext, traceparent: str | None = None
    ) -> ExplanationResult:
        client = await bridge.client()
        try:
            return await client.explain(
                context,
                priority=request.priority,
                timeout_s=timeout_s,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                prompt_profile=request.prompt_profile,
                source="explainstream-gateway",
                traceparent=traceparent,
            )
        except KafkaUnavailable:
            await bridge.reset()
            raise

    async def read_json(http: web.Request) -> Any:
        try:
            return await http.json()
        except ValueError:
            raise web.HTTPBadRequest(
                text='{"detail": "body is not valid JSON"}', content_type="application/json"
            ) from None

    async def explain(http: web.Request) -> web.Response:
        refused = limits.refuse(http, 1, "/explain")
        if refused is not None:
            return refused
        body = await read_json(http)
        try:
            request, context = parse_item(body, ("body",))
            result = await explain_one(request, context, caller_trace(http))
        except _Invalid as exc:
            return web.json_response({"detail": exc.detail}, status=422)
        except Exception as exc:
            return _error_response(exc)
        return web.json_response(old_response(result), status=_STATUS_CODES[result.status])

    async def explain_batch(http: web.Request) -> web.Response:
        body = await read_json(http)
        items = body.get("requests") if isinstance(body, dict) else body
        if not isinstance(items, list):
            detail = [
                {
                    "loc": ["body", "requests"],
                    "msg": "expected a list of requests",
                    "type": "list_type",
                }
            ]
            return web.json_response({"detail": detail}, status=422)
        if len(items) > max_batch:
            return web.json_response(
                {"detail": f"Batch size {len(items)} exceeds maximum {max_batch}"}, status=400
            )
        parsed, problems = [], []
        for index, item in enumerate(items):
            try:
                parsed.append(parse_item(item, ("body", "requests", index)))
            except _Invalid as exc:
                problems.extend(exc.detail)
        if problems:
            return web.json_response({"detail": problems}, status=422)
        refused = limits.refuse(http, len(parsed), "/explain/batch")
        if refused is not None:
            return refused
        try:
            await bridge.client()  # Kafka down: one 503 rather than N item errors
        except KafkaUnavailable as exc:
            return _error_response(exc)
        outcomes = await asyncio.gather(
            *(explain_one(r, c, caller_trace(http)) for r, c in parsed), return_exceptions=True
        )
        results: list[dict[str, Any]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ExplanationResult) and outcome.status is ResultStatus.OK:
                results.append(old_response(outcome))
            elif isinstance(outcome, ExplanationResult):
                results.append({**old_response(outcome), "index": index})
            else:
                results.append({"error": _message(outcome), "index": index})
        return web.json_response({"results": results, "total_processed": len(results)})

    async def health(_: web.Request) -> web.Response:
        # 503 while a started client's reply listener is down (it restarts on the next
        # request); Kafka not reached yet stays 200 with "kafka": false, as before.
        down = bridge.listener_down
        return web.json_response(
            {
                "status": "degraded" if down else "healthy",
                "service": "explainstream-gateway",
                "kafka": bridge.connected,
            },
            status=503 if down else 200,
        )

    async def lifecycle(_: web.Application) -> Any:
        try:
            await bridge.client()
        except KafkaUnavailable as exc:
            log.warning("gateway starting without Kafka: %s", exc)
        yield
        await bridge.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/explain", explain)
    app.router.add_post("/explain/batch", explain_batch)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", limits.metrics)
    return app


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error_response(exc: BaseException) -> web.Response:
    if isinstance(exc, ExplainTimeout):
        return web.json_response({"detail": _message(exc)}, status=504)
    if isinstance(exc, KafkaUnavailable):
        return web.json_response(
            {"detail": _message(exc)}, status=503, headers={"Retry-After": "5"}
        )
    if isinstance(exc, ValidationError):
        return web.json_response(
            {"detail": [{"loc": ["body"], "msg": _message(exc), "type": "value_error"}]},
            status=422,
        )
    if isinstance(exc, ExplainstreamError):
        return web.json_response({"detail": _message(exc)}, status=502)
    log.exception("gateway error", exc_info=exc)
    return web.json_response({"detail": "internal error"}, status=500)


async def serve(
    connection: KafkaConnection,
    topic_prefix: str,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    timeout_s: float = 30.0,
    stop: asyncio.Event | None = None,
    codec: Codec | None = None,
    limiter: GatewayLimiter | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when not given).

    ``codec`` (default: the embedded registry) is shared by every client the gateway starts.
    """
    shared = codec or Codec()
    app = create_app(
        lambda: ExplanationClient(connection, topic_prefix=topic_prefix, codec=shared),
        timeout_s=timeout_s,
        limiter=limiter,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else (host, port)
    print(f"explainstream gateway listening on http://{bound[0]}:{bound[1]}", file=sys.stderr)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _cmd(args: argparse.Namespace) -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    limiter = GatewayLimiter.from_env()
    asyncio.run(
        serve(
            KafkaConnection.from_env(),
            topic_prefix_from_env(),
            host=args.host,
            port=_port(args.port),
            timeout_s=args.timeout,
            codec=codec_from_env(),
            limiter=limiter,
        )
    )
    return 0


def _port(given: int | None) -> int:
    if given is not None:
        return given
    raw = os.environ.get("HTTP_PORT", "8000")
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError("HTTP_PORT", f"expected a port number, got {raw!r}")
    return int(raw)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``gateway``."""
    p = subparsers.add_parser("gateway", help="HTTP bridge with the old POST /explain API")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="default HTTP_PORT or 8000; 0 picks a free port (printed)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (504 after)")
    p.set_defaults(func=_cmd)
