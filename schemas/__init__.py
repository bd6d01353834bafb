"""Avro schemas of explainstream and their codec: the contract shared by both sides."""

from schemas.codec import Codec, EmbeddedRegistry, Limits, SchemaRegistry, load_schema
from schemas.compat import check_full_compatibility
from schemas.errors import (
    DecodeError,
    EncodeError,
    ExplainstreamError,
    RegistryError,
    SchemaRegistryUnavailable,
)
from schemas.models import (
    AnalysisContext,
    ExplanationRequest,
    ExplanationResult,
    ModelInfoRecord,
    ResultStatus,
    SourceOffset,
)
from schemas.registry import ConfluentSchemaRegistry, build_codec, codec_from_env

__all__ = [
    "AnalysisContext",
    "Codec",
    "ConfluentSchemaRegistry",
    "DecodeError",
    "EmbeddedRegistry",
    "EncodeError",
    "ExplainstreamError",
    "ExplanationRequest",
    "ExplanationResult",
    "Limits",
    "ModelInfoRecord",
    "RegistryError",
    "ResultStatus",
    "SchemaRegistry",
    "SchemaRegistryUnavailable",
    "SourceOffset",
    "build_codec",
    "check_full_compatibility",
    "codec_from_env",
    "load_schema",
]
