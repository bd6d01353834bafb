"""Avro schemas of explainstream and their codec: the contract shared by both sides."""

from schemas.codec import Codec, EmbeddedRegistry, SchemaRegistry, load_schema
from schemas.errors import DecodeError, EncodeError, ExplainstreamError, RegistryError
from schemas.models import (
    AnalysisContext,
    ExplanationRequest,
    ExplanationResult,
    ModelInfoRecord,
    ResultStatus,
    SourceOffset,
)

__all__ = [
    "AnalysisContext",
    "Codec",
    "DecodeError",
    "EmbeddedRegistry",
    "EncodeError",
    "ExplainstreamError",
    "ExplanationRequest",
    "ExplanationResult",
    "ModelInfoRecord",
    "RegistryError",
    "ResultStatus",
    "SchemaRegistry",
    "SourceOffset",
    "load_schema",
]
