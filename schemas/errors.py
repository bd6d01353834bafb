"""The one error tree of explainstream.

Every exception the project raises derives from :class:`ExplainstreamError`. Errors from
aiokafka, fastavro and llama.cpp are translated at the edge (``raise ... from exc``) so that
callers only ever handle these types. ``retriable`` says whether the same operation may
succeed if simply tried again.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "DecodeError",
    "EncodeError",
    "EngineError",
    "ExplainTimeout",
    "ExplainstreamError",
    "KafkaUnavailable",
    "ModelLoadError",
    "RegistryError",
    "RequestRejected",
    "SchemaRegistryUnavailable",
    "ValidationError",
]


class ExplainstreamError(Exception):
    """Base of every project error; ``retriable`` tells whether a retry may help."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(ExplainstreamError):
    """Bad configuration; the message names the offending variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class ValidationError(ExplainstreamError):
    """A request or context failed validation before it was sent."""


class EncodeError(ExplainstreamError):
    """A value could not be Avro-encoded."""


class DecodeError(ExplainstreamError):
    """Bytes could not be decoded into a record (bad framing, unknown schema, hostile data)."""


class SchemaRegistryUnavailable(DecodeError):
    """The schema registry could not be reached: the record is fine and must wait, not DLQ."""

    retriable = True


class RegistryError(ExplainstreamError):
    """The schema registry could not answer (unknown id, unreachable server)."""


class KafkaUnavailable(ExplainstreamError):
    """The Kafka cluster could not be reached or refused the operation."""

    retriable = True


class EngineError(ExplainstreamError):
    """Inference failed; ``retriable`` decides whether the consumer retries."""

    retriable = True


class ModelLoadError(ExplainstreamError):
    """The model file is missing, unreadable or not a valid GGUF."""


class RequestRejected(ExplainstreamError):
    """A well-formed request the service will not run (unknown profile, limits exceeded)."""


class DeadlineExceeded(ExplainstreamError):
    """The request's deadline passed before or during inference."""


class ExplainTimeout(ExplainstreamError, TimeoutError):
    """No result arrived within the caller's timeout (request/reply); a retry may succeed."""

    retriable = True
