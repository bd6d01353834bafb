"""Pure helpers: tiers, deadlines, trace context and request construction (no IO)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic

from schemas.errors import ValidationError
from schemas.models import AnalysisContext, ExplanationRequest, utcnow

__all__ = [
    "TIERS",
    "Deadline",
    "build_request",
    "new_traceparent",
    "request_topic",
    "resolve_deadline",
    "topic_prefix_from_env",
    "validate_tier",
    "validate_traceparent",
]

#: Priority tiers, most urgent first; the tier is the topic.
TIERS: tuple[str, ...] = ("urgent", "high", "normal", "low")

#: A deadline: an instant, a duration from now, or milliseconds from now.
Deadline = datetime | timedelta | int | float

_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def validate_tier(priority: str) -> str:
    """The tier name for ``priority``; ValidationError when it is not one of TIERS."""
    tier = str(priority).strip().lower()
    if tier not in TIERS:
        raise ValidationError(f"priority {priority!r} is not one of {', '.join(TIERS)}")
    return tier


def request_topic(prefix: str, priority: str) -> str:
    """``<prefix>.requests.<tier>``."""
    return f"{prefix}.requests.{validate_tier(priority)}"


def topic_prefix_from_env(environ: Mapping[str, str] | None = None) -> str:
    """KAFKA_TOPIC_PREFIX (default ``explain``), validated."""
    from schemas.errors import ConfigError

    env = os.environ if environ is None else environ
    prefix = env.get("KAFKA_TOPIC_PREFIX", "explain").strip() or "explain"
    if not _PREFIX.match(prefix):
        raise ConfigError("KAFKA_TOPIC_PREFIX", f"{prefix!r} is not a valid topic prefix")
    return prefix


def resolve_deadline(deadline: Deadline | None, now: datetime | None = None) -> datetime | None:
    """An absolute UTC deadline from an instant, a timedelta or milliseconds from ``now``."""
    if deadline is None:
        return None
    now = now or utcnow()
    if isinstance(deadline, bool):
        raise ValidationError("deadline must be a datetime, a timedelta or milliseconds")
    if isinstance(deadline, datetime):
        instant = deadline if deadline.tzinfo else deadline.replace(tzinfo=UTC)
    elif isinstance(deadline, timedelta):
        instant = now + deadline
    elif isinstance(deadline, (int, float)):
        instant = now + timedelta(milliseconds=deadline)
    else:
        raise ValidationError(
            f"deadline must be a datetime, a timedelta or milliseconds, not {type(deadline)}"
        )
    if instant <= now:
        raise ValidationError(f"deadline {instant.isoformat()} is not in the future")
    return instant


def new_traceparent() -> str:
    """A fresh W3C trace context ``traceparent`` (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def validate_traceparent(value: str) -> str:
    """``value`` if it is a valid version-00 W3C traceparent; ValidationError otherwise."""
    if not _TRACEPARENT.match(value):
        raise ValidationError(f"traceparent {value!r} is not a W3C trace context (00-…-…-..)")
    return value


def _describe(exc: pydantic.ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{prefix}{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def to_context(context: AnalysisContext | Mapping[str, Any]) -> AnalysisContext:
    """Validate ``context``; ValidationError naming each bad field."""
    if isinstance(context, AnalysisContext):
        return context
    if not isinstance(context, Mapping):
        raise ValidationError(
            f"context must be an AnalysisContext or a mapping, not {type(context).__name__}"
        )
    try:
        return AnalysisContext.model_validate(dict(context))
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid context: {_describe(exc, 'context.')}") from None


def build_request(
    context: AnalysisContext | Mapping[str, Any],
    *,
    max_tokens: int = 200,
    temperature: float = 0.1,
    deadline: Deadline | None = None,
    prompt_profile: str = "default",
    reply_to: str | None = None,
    source: str = "unknown",
    request_id: str | None = None,
    replay_of: str | None = None,
) -> ExplanationRequest:
    """A validated ExplanationRequest; ValidationError with every problem in one line."""
    now = utcnow()
    values: dict[str, Any] = {
        "created_at": now,
        "deadline": resolve_deadline(deadline, now),
        "context": to_context(context),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "prompt_profile": prompt_profile,
        "reply_to": reply_to,
        "replay_of": replay_of,
        "source": source,
    }
    if request_id is not None:
        values["request_id"] = request_id
    if isinstance(max_tokens, bool) or isinstance(temperature, bool):
        raise ValidationError("max_tokens and temperature must be numbers, not booleans")
    try:
        return ExplanationRequest(**values)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid request: {_describe(exc)}") from None
