"""The grounding checker: real failures are caught, faithful quotes of the context pass."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from consumer.core.grounding import (
    CHECKS,
    allowed_numbers,
    check,
    facts,
    format_value,
    repair_prefix,
    template_explanation,
)
from consumer.dev.quality_contexts import QUALITY_CONTEXTS

AAPL: dict[str, Any] = {
    "analysis_type": "sentiment",
    "symbol": "AAPL",
    "metrics": {"sentiment_score": -0.72, "current_price": 187.4},
    "attributes": {"source": "news"},
}
OPTIONS_FLOW: dict[str, Any] = {
    "analysis_type": "options_flow",
    "symbol": "MSFT",
    "metrics": {"put_call_ratio": 0.62, "current_price": 415.0, "iv_rank": 45.0},
}
MOMENTUM: dict[str, Any] = {
    "analysis_type": "momentum",
    "symbol": "CRM",
    "metrics": {"rsi_14": 28.4, "current_price": 246.8},
}


def failed_checks(text: str, context: dict[str, Any]) -> set[str]:
    return {f.split(":", 1)[0] for f in check(text, context).failed}


# Each row is an answer the bundled model gave (the demo and our bench), with the
# checks that must refuse it.
REAL_FAILURES = [
    (
        "The iPhone's demand for ACPL is increasing, with a current price of 187.4, and the "
        "Sentiment Score of -0.72 indicates a strong positive sentiment.",
        AAPL,
        {"symbol", "ticker", "direction"},
    ),
    (
        "AAPL is expected to rise by 2.2% in the next quarter, according to a recent report "
        "by the Apex Market Research.",
        AAPL,
        {"number"},
    ),
    (
        "MSFT EPS surged to $415 and the market index rose 35 points, from 2.1% to 3.1%.",
        OPTIONS_FLOW,
        {"number", "misattribution"},
    ),
    (
        'The analysis result is:\n\n<context_data>\n{"analysis_type":"options_flow", '
        '"symbol":"MSFT"}',
        OPTIONS_FLOW,
        {"markup"},
    ),
    ("CRM has an RSI of 28.4, a return of 28.4 %.", MOMENTUM, {"number"}),
    ("CRM shows a return of 28.4 over the month.", MOMENTUM, {"misattribution"}),
    (
        "AAPL: The stock is down 18.74% from its current price of $187.40. Sentiment: "
        "Positive. </context_data>",
        AAPL,
        {"number", "markup", "direction"},
    ),
    ("NFLXX. 4.21. 3.02.", {**MOMENTUM, "symbol": "NFLX"}, {"symbol", "ticker", "number"}),
    (
        "JPM is a leading financial institution with a reputation for transparency.",
        {"analysis_type": "sentiment", "symbol": "JPM", "metrics": {"sentiment_score": 0.66}},
        {"coverage"},
    ),
    (
        "AAPL, founded in 1976, trades at 187.4 with a market cap of 2.1 billion.",
        AAPL,
        {"number"},
    ),
    ("AAPL trades at " + "1" * 120 + ".", AAPL, {"number"}),
    (
        "INTC's rsi 14 is down 45.0.184.0.184.",
        {"analysis_type": "momentum", "symbol": "INTC", "metrics": {"rsi_14": 45.0, "x": 0.184}},
        {"number"},
    ),
    (
        "CRM rose 6.1% this month on a price of 246.8.",
        {**MOMENTUM, "metrics": {"return_1m": -0.061, "current_price": 246.8}},
        {"direction"},
    ),
]


@pytest.mark.parametrize(("text", "context", "expected"), REAL_FAILURES)
def test_real_failures_are_caught_by_the_right_check(
    text: str, context: dict[str, Any], expected: set[str]
) -> None:
    report = check(text, context)
    assert not report.grounded
    assert expected <= failed_checks(text, context), report.failed
    for name in expected:
        assert report.outcomes[name] == "fail"


GOOD_ANSWERS = [
    (
        "AAPL's sentiment score of -0.72 is negative, and the stock trades at $187.40.",
        AAPL,
    ),
    ("AAPL trades near 187 while sentiment is bearish (-0.72).", AAPL),
    (
        "MSFT's put/call ratio is 0.62, so calls outnumber puts; the IV rank is 45% and the "
        "price is 415.",
        OPTIONS_FLOW,
    ),
    (
        "NVDA beat estimates: the EPS surprise was 12% and revenue growth 94%, in Q3.",
        {
            "analysis_type": "earnings",
            "symbol": "NVDA",
            "metrics": {"eps_surprise": 0.12, "revenue_growth": 0.94},
            "attributes": {"quarter": "Q3"},
        },
    ),
    (
        "HYG's spread is 312 bps, 18 bps tighter.",
        {
            "analysis_type": "credit",
            "symbol": "HYG",
            "metrics": {"spread_bps": 312.0, "spread_change_bps": -18.0},
        },
    ),
    (
        "BRK.B has a market cap of $903 billion and a price to book of 1.5.",
        {
            "analysis_type": "valuation",
            "symbol": "BRK.B",
            "metrics": {"price_to_book": 1.52, "market_cap": 903000000000.0},
        },
    ),
    (
        "In two sentences: CRM's 14-day RSI is 28.4, which is oversold territory.",
        MOMENTUM,
    ),
    (
        "As of 2026-12-07, XOM's 5-day return is -2.7%, down, with negative sentiment.",
        {
            "analysis_type": "sentiment",
            "symbol": "XOM",
            "metrics": {"sentiment_score": -0.41, "return_5d": -0.027},
            "as_of": datetime(2026, 12, 7, 9, 30, tzinfo=UTC),
        },
    ),
]


@pytest.mark.parametrize(("text", "context"), GOOD_ANSWERS)
def test_faithful_answers_pass(text: str, context: dict[str, Any]) -> None:
    report = check(text, context)
    assert report.grounded, report.failed
    assert set(report.outcomes) == set(CHECKS)


def test_a_report_names_each_failure_and_bounds_the_list() -> None:
    text = "AAPL " + " ".join(f"{n}.5" for n in range(20, 60))
    report = check(text, AAPL)
    assert report.failed[0] == "number: 20.5"
    assert len(report.failed) == 8
    assert all(len(f) <= 80 for f in report.failed)


def test_checks_that_do_not_apply_are_skipped() -> None:
    context = {"analysis_type": "macro", "metrics": {}}
    report = check("Rates were unchanged.", context)
    assert report.grounded
    assert report.outcomes["symbol"] == "skip" and report.outcomes["coverage"] == "skip"
    assert report.outcomes["number"] == "skip"


@pytest.mark.parametrize(("profile", "context"), QUALITY_CONTEXTS)
def test_the_template_is_grounded_for_every_bench_context(
    profile: str, context: dict[str, Any]
) -> None:
    text = template_explanation(context)
    assert check(text, context).grounded, (text, check(text, context).failed)
    if context.get("symbol"):
        assert text.startswith(context["symbol"])
    assert repair_prefix(context).startswith(context.get("symbol") or "The ")


# -- properties ------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "sentiment_score",
        "current_price",
        "return_1m",
        "iv_rank",
        "rsi_14",
        "eps_surprise",
        "put_call_ratio",
        "market_cap",
        "spread_bps",
        "volatility_30d",
        "change_pct",
        "flow_score",
    ]
)
_VALUES = st.one_of(
    st.floats(min_value=-1, max_value=1, allow_nan=False),
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False),
    st.floats(min_value=1e5, max_value=5e12, allow_nan=False),
).filter(lambda v: v == 0 or abs(v) > 1e-4)


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    metrics = draw(st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=5))
    symbol = draw(st.sampled_from(["AAPL", "TSLA", "BRK.B", "SPY", None]))
    attributes = draw(
        st.dictionaries(
            st.sampled_from(["quarter", "source", "note"]),
            st.text(max_size=40),
            max_size=2,
        )
    )
    context: dict[str, Any] = {
        "analysis_type": draw(st.sampled_from(["sentiment", "options_flow", "earnings"])),
        "metrics": metrics,
        "attributes": attributes,
    }
    if symbol:
        context["symbol"] = symbol
    return context


@settings(max_examples=300, deadline=None)
@given(contexts())
def test_the_template_and_the_facts_pass_for_any_context(context: dict[str, Any]) -> None:
    text = template_explanation(context)
    assert check(text, context).grounded, (text, check(text, context).failed)
    block = " ".join(facts(context))
    assert check(block, context).outcomes["number"] != "fail", block


@settings(max_examples=300, deadline=None)
@given(contexts(), st.data())
def test_every_documented_form_of_a_value_is_accepted(
    context: dict[str, Any], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(context["metrics"])))
    value = context["metrics"][key]
    label = key.replace("_", " ")
    # As the facts show it, and rounded to three significant digits (raw, in billions and,
    # for a ratio, as a percent).
    forms = [format_value(value), format_value(float(f"{value:.3g}"))]
    if abs(value) >= 1e9:
        forms.append(f"{format_value(float(f'{value / 1e9:.3g}'))} billion")
    if 0 < abs(value) <= 1:
        forms.append(f"{format_value(float(f'{value * 100:.3g}'))}%")
    for form in forms:
        assume(not (form.lstrip("-").isdigit() and abs(float(form)) <= 10))
        text = f"{context.get('symbol') or ''} {label} is {form}."
        assert "number" not in failed_checks(text, context), (text, check(text, context))


@settings(max_examples=300, deadline=None)
@given(
    contexts(),
    st.floats(min_value=25, max_value=1e6),
    st.sampled_from([1.03, 0.96, 1.5, 10.0, -1.0]),
)
def test_a_perturbed_number_is_refused(
    context: dict[str, Any], probe: float, factor: float
) -> None:
    context["metrics"]["probe_value"] = probe
    value = probe * factor
    # Far from every other value (the probe itself differs by 3 % at least, or in sign).
    others = [abs(v) for k, v in context["metrics"].items() if k != "probe_value"]
    assume(all(not math.isclose(abs(value), o, rel_tol=0.06) for o in others))
    assume(all(not math.isclose(abs(value), 100 * o, rel_tol=0.06) for o in others))
    assume(all(not math.isclose(abs(value), 1e4 * o, rel_tol=0.06) for o in others))
    text = f"The probe value is {format_value(value)}."
    assert "number" in failed_checks(text, context), (text, context)


@given(contexts())
def test_the_grammar_numbers_are_the_facts_numbers(context: dict[str, Any]) -> None:
    allowed = allowed_numbers(context)
    assert all(n and not n.startswith("-") for n in allowed)
    for value in context["metrics"].values():
        assert format_value(abs(value)) in allowed


PROMPT = (
    "You are a financial analyst. Use only the facts between <context_data> tags: name the "
    "symbol, quote their numbers exactly as written and write no other numbers.",
    "Explain the facts below to an investor in two or three sentences.",
)


def test_an_answer_that_repeats_its_instructions_fails_echo() -> None:
    leaked = (
        "AAPL's sentiment score is -0.72, negative. Quote their numbers exactly as written "
        "and write no other numbers."
    )
    report = check(leaked, AAPL, PROMPT)
    assert report.outcomes["echo"] == "fail"
    assert report.failed == ("echo: quote their numbers exactly as written",)
    # Without the prompt the checker cannot tell, and says so rather than passing it.
    assert check(leaked, AAPL).outcomes["echo"] == "skip"


def test_an_answer_sharing_a_few_words_with_its_instructions_passes_echo() -> None:
    text = "AAPL's sentiment score is -0.72, negative: the facts between them say no more."
    report = check(text, AAPL, PROMPT)
    assert report.outcomes["echo"] == "pass", report.failed
    assert report.grounded
