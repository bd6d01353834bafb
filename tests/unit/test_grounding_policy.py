"""GROUNDING=off|flag|repair: what is published, who wrote it, and what the result says."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from consumer.config import GroundingPolicy, Settings
from consumer.core.grounding import check
from consumer.engines.base import GenerationRequest, GenerationResult
from consumer.runtime.grounded import ground, number_grammar
from schemas.codec import RESULT_SUBJECT, load_schema
from schemas.compat import check_full_compatibility
from schemas.models import GroundingSource

CONTEXT: dict[str, Any] = {
    "analysis_type": "sentiment",
    "symbol": "AAPL",
    "metrics": {"sentiment_score": -0.72, "current_price": 187.4, "return_1m": 0.084},
}
BAD = "ACPL is expected to rise by 2.2% next quarter, a strong positive sentiment."
GOOD = "AAPL's sentiment score is -0.72, negative, with the price at 187.4."


class Scripted:
    """An engine that answers from a script and records what it was asked."""

    name = "scripted"

    def __init__(self, *texts: str, ms: float = 40.0) -> None:
        self.texts = list(texts)
        self.ms = ms
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        return result(self.texts.pop(0), self.ms)


def result(text: str, ms: float = 40.0) -> GenerationResult:
    return GenerationResult(
        text=text,
        prompt_tokens=50,
        completion_tokens=20,
        finish_reason="stop",
        confidence_score=0.8,
        processing_time_ms=ms,
        compute_ms=ms,
    )


def request(**overrides: Any) -> GenerationRequest:
    return replace(GenerationRequest(request_id="r1", context=CONTEXT), **overrides)


async def test_off_publishes_as_generated_without_a_verdict() -> None:
    engine = Scripted()
    answer = await ground(engine, request(), result(BAD), GroundingPolicy.OFF)
    assert answer.result.text == BAD and answer.grounding is None and answer.reports == ()
    assert engine.requests == []


async def test_flag_publishes_as_generated_with_the_verdict() -> None:
    answer = await ground(Scripted(), request(), result(BAD), GroundingPolicy.FLAG)
    g = answer.grounding
    assert answer.result.text == BAD
    assert g is not None and not g.grounded and g.source is GroundingSource.MODEL
    assert "number: 2.2%" in g.failed_checks and "ticker: ACPL" in g.failed_checks
    assert g.attempts == 1


async def test_a_grounded_first_answer_is_published_as_is() -> None:
    engine = Scripted()
    answer = await ground(engine, request(), result(GOOD), GroundingPolicy.REPAIR)
    assert answer.result.text == GOOD and engine.requests == []
    assert answer.grounding is not None and answer.grounding.grounded
    assert answer.grounding.failed_checks == [] and answer.grounding.attempts == 1


async def test_repair_regenerates_once_greedy_and_constrained() -> None:
    engine = Scripted(GOOD)
    answer = await ground(engine, request(temperature=0.7), result(BAD), GroundingPolicy.REPAIR)
    (again,) = engine.requests
    assert again.temperature == 0.0 and again.grammar == number_grammar(CONTEXT)
    assert again.answer_prefix == "AAPL's sentiment score is"
    g = answer.grounding
    assert g is not None and g.grounded and g.attempts == 2 and g.source is GroundingSource.MODEL
    assert "number: 2.2%" in g.failed_checks  # why the first answer was not published
    assert answer.result.text == GOOD
    assert answer.result.completion_tokens == 40  # both generations are accounted
    assert len(answer.reports) == 2


async def test_a_failed_repair_publishes_the_template() -> None:
    engine = Scripted("AAPL rose 3.3% in 2024.")
    answer = await ground(engine, request(), result(BAD), GroundingPolicy.REPAIR)
    g = answer.grounding
    assert g is not None and g.source is GroundingSource.TEMPLATE and g.grounded
    assert g.attempts == 2
    assert "number: 2.2%" in g.failed_checks and "number: 3.3%" in g.failed_checks
    text = answer.result.text
    assert text.startswith("AAPL") and "-0.72" in text and "negative" in text
    assert check(text, CONTEXT).grounded
    assert answer.result.confidence_score is None  # no model certainty for a template


async def test_no_time_before_the_deadline_means_the_template_at_once() -> None:
    engine = Scripted(GOOD)
    late = request(deadline_monotonic=time.monotonic() + 0.01)
    answer = await ground(engine, late, result(BAD, ms=500), GroundingPolicy.REPAIR)
    assert engine.requests == []  # a repair would not finish in time
    g = answer.grounding
    assert g is not None and g.source is GroundingSource.TEMPLATE and g.attempts == 1


async def test_a_repair_that_raises_still_ends_in_the_template() -> None:
    class Broken(Scripted):
        async def generate(self, request: GenerationRequest) -> GenerationResult:
            raise RuntimeError("engine gave up")

    answer = await ground(Broken(), request(), result(BAD), GroundingPolicy.REPAIR)
    assert answer.grounding is not None
    assert answer.grounding.source is GroundingSource.TEMPLATE


def test_the_number_grammar_lists_only_the_contexts_numbers() -> None:
    grammar = number_grammar(CONTEXT)
    assert '"187.4"' in grammar and '"0.72"' in grammar and '"8.4%"' in grammar
    assert "ch ::= [^0-9%<>{}|\\[\\]\\\\]" in grammar


def test_the_policy_setting_defaults_to_repair_and_refuses_unknown_values() -> None:
    assert Settings().grounding is GroundingPolicy.REPAIR
    assert Settings(grounding="flag").grounding is GroundingPolicy.FLAG
    with pytest.raises(Exception, match="grounding"):
        Settings(grounding="maybe")


def test_result_v3_adds_grounding_with_full_compatibility() -> None:
    from tests.unit.test_llama_accounting import _record, _roundtrip

    v2, v3 = load_schema(RESULT_SUBJECT, 2), load_schema(RESULT_SUBJECT, 3)
    assert check_full_compatibility(v2, v3) == []
    assert check_full_compatibility(v3, load_schema(RESULT_SUBJECT)) == []
    verdict = {
        "grounded": False,
        "failed_checks": ["number: 2.2%"],
        "attempts": 2,
        "source": "template",
    }
    assert _roundtrip(_record(compute_ms=1.0), v2, v3)["grounding"] is None
    old_reader = _roundtrip(_record(compute_ms=1.0, grounding=verdict), v3, v2)
    assert "grounding" not in old_reader and old_reader["compute_ms"] == 1.0
    assert _roundtrip(_record(grounding=verdict), v3, v3)["grounding"] == verdict


async def test_grounding_metrics_count_checks_and_who_answered() -> None:
    from prometheus_client import CollectorRegistry

    from consumer.ops.metrics import Metrics

    reg = CollectorRegistry()
    metrics = Metrics(reg)

    def value(name: str, **labels: str) -> float:
        return reg.get_sample_value(name, labels) or 0.0

    assert value("explainstream_grounding_checks_total", check="number", outcome="fail") == 0
    answer = await ground(
        Scripted("AAPL rose 3.3%."), request(), result(BAD), GroundingPolicy.REPAIR
    )
    metrics.observe_grounding("urgent", answer.reports, answer.grounding)
    assert value("explainstream_grounding_checks_total", check="number", outcome="fail") == 2
    assert value("explainstream_grounding_checks_total", check="ticker", outcome="fail") == 1
    assert value("explainstream_grounding_checks_total", check="ticker", outcome="pass") == 1
    labels = {"priority": "urgent", "source": "template", "grounded": "true"}
    assert value("explainstream_grounding_results_total", **labels) == 1
    ok = await ground(Scripted(), request(), result(GOOD), GroundingPolicy.REPAIR)
    metrics.observe_grounding("low", ok.reports, ok.grounding)
    labels = {"priority": "low", "source": "model", "grounded": "true"}
    assert value("explainstream_grounding_results_total", **labels) == 1


async def test_an_answer_echoing_the_profiles_instructions_is_repaired() -> None:
    from consumer.engines.profiles import prompt_instructions

    system, _instruction = prompt_instructions("default")
    words = system.split()
    echo = "AAPL's sentiment score is -0.72, negative. " + " ".join(words[-12:])
    engine = Scripted(GOOD)
    answer = await ground(engine, request(), result(echo), GroundingPolicy.REPAIR)
    g = answer.grounding
    assert g is not None and g.grounded and g.attempts == 2
    assert any(f.startswith("echo: ") for f in g.failed_checks), g.failed_checks
    assert answer.result.text == GOOD
