"""explainstream producer SDK: submit analysis contexts, await or read their explanations.

Base install only (aiokafka, fastavro, pydantic): no llama, GPU, HTTP server or metrics.

    async with ExplanationProducer(KafkaConnection("broker:9092")) as producer:
        request_id = await producer.submit({"analysis_type": "sentiment", "symbol": "AAPL",
                                            "metrics": {"sentiment_score": 0.75}},
                                           priority="high")
"""

from producer_sdk._requests import TIERS, new_traceparent
from producer_sdk.client import ExplanationClient
from producer_sdk.connection import KafkaConnection
from producer_sdk.producer import ExplanationProducer
from producer_sdk.results import ResultsReader, results
from producer_sdk.sync import SyncExplanationClient, SyncExplanationProducer
from schemas.errors import (
    DecodeError,
    ExplainstreamError,
    ExplainTimeout,
    KafkaUnavailable,
    ValidationError,
)
from schemas.models import AnalysisContext, ExplanationRequest, ExplanationResult, ResultStatus

__all__ = [
    "TIERS",
    "AnalysisContext",
    "DecodeError",
    "ExplainTimeout",
    "ExplainstreamError",
    "ExplanationClient",
    "ExplanationProducer",
    "ExplanationRequest",
    "ExplanationResult",
    "KafkaConnection",
    "KafkaUnavailable",
    "ResultStatus",
    "ResultsReader",
    "SyncExplanationClient",
    "SyncExplanationProducer",
    "ValidationError",
    "new_traceparent",
    "results",
]
