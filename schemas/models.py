"""Pydantic models mirroring the Avro records field by field (a test proves they agree)."""

from __future__ import annotations

import math
import struct
import uuid
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AnalysisContext",
    "ExplanationRequest",
    "ExplanationResult",
    "Grounding",
    "GroundingSource",
    "ModelInfoRecord",
    "ResultStatus",
    "SourceOffset",
    "float32",
    "utcnow",
]


def utcnow() -> datetime:
    """Now in UTC truncated to milliseconds (what timestamp-millis can carry)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def float32(value: float) -> float:
    """``value`` as Avro ``float`` carries it: the shortest decimal with its 32-bit pattern.

    Avro ``float`` is IEEE single precision, so 0.9 travels as 0.89999997615814208984375;
    widening that to a Python float would print ``0.8999999761581421``. The shortest
    decimal that packs to the same 32 bits (``0.9``) is the same wire value and what a
    reader expects to see.
    """
    bits = struct.pack("<f", value)
    single = float(struct.unpack("<f", bits)[0])
    if not math.isfinite(single):
        return single
    # Nine significant digits always suffice to round-trip an IEEE single.
    for digits in range(1, 10):
        candidate = float(f"{single:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == bits:
                return candidate
        except OverflowError:  # rounded up past the largest single (near 3.4e38)
            continue
    return single


def _ms(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class AnalysisContext(BaseModel):
    """Output of an upstream analytics service: what is to be explained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    analysis_type: str = Field(min_length=1, max_length=128)
    symbol: str | None = Field(default=None, max_length=32)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=64)
    as_of: datetime | None = None

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if not math.isfinite(number):
                raise ValueError(f"metric {key!r} is not a finite number")
        return value

    @field_validator("attributes")
    @classmethod
    def _short(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if len(text) > 4096:
                raise ValueError(f"attribute {key!r} is longer than 4096 characters")
        return value

    @field_validator("as_of")
    @classmethod
    def _as_of_ms(cls, value: datetime | None) -> datetime | None:
        return _ms(value)


class ExplanationRequest(BaseModel):
    """One request on a tier topic; key = request_id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = Field(default_factory=utcnow)
    deadline: datetime | None = None
    context: AnalysisContext
    max_tokens: int = Field(default=200, ge=1, le=8192)
    temperature: float = Field(default=0.1, ge=0.0, le=2.0, validate_default=True)
    prompt_profile: str = Field(default="default", min_length=1, max_length=64)
    reply_to: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    replay_of: str | None = None
    source: str = Field(default="unknown", max_length=128)

    @field_validator("request_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except ValueError as exc:
            raise ValueError(f"request_id {value!r} is not a UUID") from exc
        return value

    @field_validator("created_at", "deadline")
    @classmethod
    def _to_ms(cls, value: datetime | None) -> datetime | None:
        return _ms(value)

    @field_validator("temperature")
    @classmethod
    def _f32(cls, value: float) -> float:
        return float32(value)


class ResultStatus(StrEnum):
    """Outcome of a request."""

    OK = "OK"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"


class ModelInfoRecord(BaseModel):
    """Identity of the model that produced a result."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_name: str
    quantization: str
    gpu_layers: int
    context_size: int
    model_sha256: str


class SourceOffset(BaseModel):
    """Where a request was read from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    partition: int
    offset: int


class GroundingSource(StrEnum):
    """Who wrote a published explanation."""

    MODEL = "model"
    TEMPLATE = "template"


class Grounding(BaseModel):
    """The grounding checker's verdict on an OK explanation (result schema v3).

    ``grounded`` is about the published text; ``failed_checks`` lists what the model's
    answers failed (``"<check>: <detail>"``), so a template answer says why it replaced
    the model's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    grounded: bool
    failed_checks: list[str] = Field(default_factory=list)
    attempts: int = 1
    source: GroundingSource = GroundingSource.MODEL


class ExplanationResult(BaseModel):
    """Exactly one per valid request; key = request_id."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    request_id: str
    status: ResultStatus
    explanation: str | None = None
    error: str | None = None
    tier: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_time_ms: float = 0.0
    processing_time_ms: float = 0.0
    completed_at: datetime = Field(default_factory=utcnow)
    confidence_score: float | None = None
    model_info: ModelInfoRecord
    prompt_profile: str = "default"
    consumer_id: str = ""
    replay_of: str | None = None
    request_offset: SourceOffset
    attempts: int = 1
    compute_ms: float | None = None  # v2
    grounding: Grounding | None = None  # v3
    service_version: str | None = None  # v4

    @field_validator("completed_at")
    @classmethod
    def _to_ms(cls, value: datetime) -> datetime:
        result = _ms(value)
        assert result is not None
        return result

    @field_validator("confidence_score")
    @classmethod
    def _f32(cls, value: float | None) -> float | None:
        return None if value is None else float32(value)
