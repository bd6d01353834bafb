"""The fine-tuning set: (context, explanation) pairs that pass the grounding checks.

Contexts are synthetic and seeded: every analysis type of ``bench quality``, other symbols
(none of :data:`~consumer.dev.quality_contexts.QUALITY_CONTEXTS`' tickers, so the bench
measures contexts the training never saw), both signs and several magnitudes. Their
explanations come from varied phrasings of the facts, each kept only if
:func:`~consumer.core.grounding.check` accepts it, and (optionally) from model answers that
the checker accepted. Every explanation starts with the symbol: the engine writes the
symbol itself as the answer's first word (the profile's anchor), and the model continues
from there, so the training text must too.

A dataset file is JSON lines, one ``{"profile", "context", "explanation"}`` object each;
:func:`load_dataset` refuses a line that is not such a pair, or whose explanation fails the
checks, naming the line.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.core.grounding import check
from consumer.core.grounding.values import fact_lines
from consumer.dev.quality_contexts import QUALITY_CONTEXTS
from consumer.engines.profiles import builtin_profiles

__all__ = [
    "DatasetError",
    "Example",
    "dump_dataset",
    "explanations",
    "load_dataset",
    "training_contexts",
    "training_examples",
]

# Real tickers, none of them in the quality bench's contexts (checked at import below).
_SYMBOLS = (
    "CSCO", "PEP", "MRK", "ABBV", "CVX", "HD", "LOW", "MCD", "SBUX", "NKE", "IBM", "QCOM",
    "TXN", "AVGO", "MU", "AMAT", "GS", "MS", "BAC", "WFC", "V", "MA", "PYPL", "UNH", "CVS",
    "LLY", "BMY", "GILD", "CAT", "DE", "GE", "HON", "MMM", "UPS", "FDX", "DAL", "UAL", "MAR",
    "HLT", "BKNG", "ABNB", "SNAP", "PINS", "ROKU", "ZM", "TGT", "KR", "CL", "KMB", "MO", "PM",
    "NEE", "DUK", "SO", "AMT", "PLD", "SPG", "EEM", "EFA", "TLT", "LQD", "XLF", "XLV", "XLY",
    "XLP", "XLU", "DIA", "SMH", "GDX", "SLV", "USO", "ADI", "LRCX", "KLAC", "SNOW", "DDOG",
    "NET", "CRWD", "PANW", "NOW", "INTU",
)  # fmt: skip
_HELD_OUT = {str(c.get("symbol")) for _, c in QUALITY_CONTEXTS if c.get("symbol")}
assert not _HELD_OUT & set(_SYMBOLS), "training symbols must differ from the bench's"


def _u(lo: float, hi: float, digits: int) -> Callable[[random.Random], float]:
    return lambda rng: round(rng.uniform(lo, hi), digits)


def _signed(lo: float, hi: float, digits: int) -> Callable[[random.Random], float]:
    """A magnitude in [lo, hi] with a random sign (both signs are taught)."""
    return lambda rng: round(rng.choice((-1, 1)) * rng.uniform(lo, hi), digits)


def _big(lo: float, hi: float) -> Callable[[random.Random], float]:
    return lambda rng: float(round(math.exp(rng.uniform(math.log(lo), math.log(hi))), -3))


_Spec = tuple[str, str, dict[str, Callable[[random.Random], float]], dict[str, tuple[str, ...]]]

#: (profile, analysis type, metric samplers, attribute choices); a context draws 1-3 metrics.
_KINDS: tuple[_Spec, ...] = (
    ("default", "sentiment", {"sentiment_score": _signed(0.0, 0.95, 2),
                              "current_price": _u(8, 900, 2), "news_volume": _u(20, 900, 0),
                              "mentions": _u(100, 5000, 0), "return_5d": _signed(0.002, 0.09, 3)},
     {"source": ("news", "social", "filings")}),
    ("default", "momentum", {"rsi_14": _u(12, 88, 1), "current_price": _u(8, 900, 2),
                             "return_20d": _signed(0.005, 0.2, 3), "macd": _signed(0.1, 6, 2),
                             "sma_50": _u(10, 800, 1)}, {"timeframe": ("daily", "weekly")}),
    ("default", "trend", {"sma_50": _u(10, 800, 1), "sma_200": _u(10, 800, 1),
                          "current_price": _u(8, 900, 2)}, {}),
    ("default", "earnings", {"eps_surprise": _signed(0.01, 0.3, 3),
                             "revenue_growth": _signed(0.01, 0.6, 3), "eps": _u(0.1, 9, 2),
                             "eps_estimate": _u(0.1, 9, 2)},
     {"quarter": ("Q1", "Q2", "Q3", "Q4")}),
    ("default", "valuation", {"pe_ratio": _u(5, 60, 1), "forward_pe": _u(5, 50, 1),
                              "price_to_book": _u(0.5, 12, 2),
                              "dividend_yield": _u(0.005, 0.07, 3)},
     {}),
    ("default", "volume", {"volume_ratio": _u(0.3, 4.5, 1), "return_1d": _signed(0.002, 0.06, 3),
                           "current_price": _u(8, 900, 2)}, {}),
    ("default", "risk", {"beta": _u(0.3, 2.6, 2), "volatility_30d": _u(0.08, 0.9, 2),
                         "max_drawdown": _u(-0.6, -0.05, 2)}, {}),
    ("default", "sector", {"return_1m": _signed(0.005, 0.12, 3),
                           "sentiment_score": _signed(0.0, 0.9, 2)},
     {"sector": ("financials", "health care", "utilities", "technology", "materials")}),
    ("default", "credit", {"spread_bps": _u(60, 700, 0), "spread_change_bps": _signed(2, 60, 0)},
     {}),
    ("default", "flows", {"net_inflow": _signed(1e7, 4e9, -6),
                          "return_5d": _signed(0.002, 0.05, 3)},
     {}),
    ("default", "dividend", {"dividend_yield": _u(0.005, 0.08, 3),
                             "payout_ratio": _u(0.1, 0.95, 2)},
     {}),
    ("default", "liquidity", {"bid_ask_spread_bps": _u(0.5, 30, 1), "avg_volume": _big(2e5, 9e7)},
     {}),
    ("options", "options_flow", {"put_call_ratio": _u(0.3, 2.2, 2), "call_volume": _big(1e4, 4e6),
                                 "unusual_volume": _u(1.2, 6, 1), "iv_rank": _u(3, 97, 0)}, {}),
    ("options", "volatility", {"iv_rank": _u(3, 97, 0), "implied_volatility": _u(0.08, 1.2, 3),
                               "iv_percentile": _u(3, 97, 0), "hv_30d": _u(0.08, 1.0, 2)},
     {"tenor": ("30d", "60d", "90d")}),
    ("options", "skew", {"skew_25d": _signed(0.005, 0.12, 3), "iv_rank": _u(3, 97, 0),
                         "put_call_ratio": _u(0.3, 2.2, 2)}, {"tenor": ("30d", "60d")}),
    ("options", "open_interest", {"open_interest": _big(1e4, 5e6),
                                  "oi_change": _signed(0.01, 0.4, 2)},
     {}),
    ("options", "greeks", {"delta": _u(0.05, 0.95, 2), "gamma": _u(0.001, 0.08, 3),
                           "theta": _u(-1.5, -0.01, 2), "vega": _u(0.02, 0.9, 2)}, {}),
    ("options", "earnings_move", {"implied_move": _u(0.02, 0.18, 3), "iv_rank": _u(3, 97, 0)},
     {"quarter": ("Q1", "Q2", "Q3", "Q4")}),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Example:
    """One training pair: the profile, the context (as the wire carries it) and the answer."""

    profile: str
    context: dict[str, Any]
    explanation: str
    source: str = "template"

    def as_json(self) -> str:
        """The dataset line."""
        return json.dumps(
            {"profile": self.profile, "context": self.context, "explanation": self.explanation,
             "source": self.source},
            sort_keys=True,
        )  # fmt: skip


def training_contexts(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``n`` seeded (profile, context) pairs cycling over every analysis type."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        profile, kind, samplers, attrs = _KINDS[i % len(_KINDS)]
        keys = rng.sample(sorted(samplers), k=min(len(samplers), rng.choice((1, 2, 2, 3))))
        context: dict[str, Any] = {
            "analysis_type": kind,
            "symbol": rng.choice(_SYMBOLS),
            "metrics": {k: samplers[k](rng) for k in keys},
        }
        attributes = {k: rng.choice(v) for k, v in attrs.items() if rng.random() < 0.5}
        if attributes:
            context["attributes"] = attributes
        out.append((profile, context))
    return out


def _split(statement: str) -> tuple[str, str | None, str | None]:
    """``"0.061 (6.1%), up"`` → (``"0.061"``, ``"6.1%"``, ``"up"``)."""
    value, _, direction = statement.partition(", ")
    pct = None
    if " (" in value and value.endswith(")"):
        value, pct = value[:-1].split(" (", 1)
    return value, pct, direction or None


_ACRONYMS = {"eps", "iv", "hv", "rsi", "sma", "macd", "oi", "pe", "ev"}
_UNITS = {"d": "day", "w": "week", "m": "month", "y": "year"}


def _pretty(label: str) -> str:
    """``"return 5d"`` → ``"5-day return"``, ``"rsi 14"`` → ``"14-day RSI"``, ``"eps"`` →
    ``"EPS"``: how a person names the metric (the checker still sees its key's words)."""
    words = label.split()
    period = ""
    out = []
    for i, word in enumerate(words):
        if len(word) > 1 and word[:-1].isdigit() and word[-1] in _UNITS:
            period = f"{word[:-1]}-{_UNITS[word[-1]]} "
        elif word.isdigit() and i and words[i - 1] in _ACRONYMS:
            period = f"{word}-day "
        elif word == "bps":
            out.append("in basis points")
        else:
            out.append(word.upper() if word in _ACRONYMS else word)
    return period + " ".join(out)


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" or noun.split()[0] in {"RSI", "SMA", "HV"} else "a"


def _metric_phrases(context: Mapping[str, Any], rng: random.Random) -> list[tuple[str, str, str]]:
    """(label, value as quoted, direction word or "") per metric, in the facts' order."""
    out = []
    for subject, statement in fact_lines(context):
        if not subject.startswith("metric:"):
            continue
        value, pct, direction = _split(statement)
        if pct is not None and rng.random() < 0.5:
            value = pct
        out.append((_pretty(subject.removeprefix("metric:")), value, direction or ""))
    return out


_DIRECTION = {
    "positive": ("positive", "a positive reading", "leaning positive"),
    "negative": ("negative", "a negative reading", "leaning negative"),
    "neutral": ("neutral", "close to neutral", "a neutral reading"),
    "up": ("up", "higher", "a gain"),
    "down": ("down", "lower", "a decline"),
}


def _clause(
    label: str, value: str, direction: str, rng: random.Random, noun_only: bool = False
) -> str:
    forms = [f"{_article(label)} {label} of {value}"]
    if not noun_only:
        forms += [f"the {label} is {value}", f"the {label} stands at {value}"]
    text = rng.choice(forms)
    if direction:
        text += ", " + rng.choice(_DIRECTION[direction])
    return text


def _closing(context: Mapping[str, Any]) -> list[str]:
    """Number-free sentences the data supports (what a reading means, never advice)."""
    metrics = dict(context.get("metrics") or {})
    out = []
    rsi = metrics.get("rsi_14")
    if rsi is not None and rsi < 30:
        out.append("That RSI reading is usually called oversold.")
    elif rsi is not None and rsi > 70:
        out.append("That RSI reading is usually called overbought.")
    pcr = metrics.get("put_call_ratio")
    if pcr is not None:
        out.append("Puts outnumber calls." if pcr > 1 else "Calls outnumber puts.")
    beta = metrics.get("beta")
    if beta is not None:
        out.append(
            "The stock has moved more than the market." if beta > 1
            else "The stock has moved less than the market."
        )  # fmt: skip
    ivr = metrics.get("iv_rank")
    if ivr is not None:
        level = "high" if ivr >= 50 else "low"
        out.append(f"Options are priced {level} against the past year's range.")
    sma50, sma200 = metrics.get("sma_50"), metrics.get("sma_200")
    if sma50 is not None and sma200 is not None:
        out.append(
            "The shorter average is above the longer one." if sma50 > sma200
            else "The shorter average is below the longer one."
        )  # fmt: skip
    out += [
        "These are the figures the analysis gives; no forecast is implied.",
        "No forecast is implied by these figures.",
        "The analysis gives no further figures.",
    ]
    return out


def explanations(context: Mapping[str, Any], rng: random.Random, n: int = 2) -> list[str]:
    """Up to ``n`` distinct explanations of ``context`` that pass the grounding checks."""
    symbol = str(context.get("symbol") or "")
    kind = str(context.get("analysis_type", "")).replace("_", " ")
    found: list[str] = []
    for _ in range(4 * n):
        phrases = _metric_phrases(context, rng)
        shows = rng.random() < 0.25
        clauses = [_clause(*p, rng, noun_only=shows) for p in phrases]
        if not clauses:
            break
        body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
        opener = f"{symbol} shows {body}." if shows else rng.choice((
            f"{symbol}'s {kind} analysis: {body}.",
            f"{symbol}: {body}.",
            f"{symbol}, in this {kind} analysis, {body}.",
        ))  # fmt: skip
        closing = _closing(context)
        text = opener + " " + rng.choice(closing)
        text = text[0].upper() + text[1:] if not symbol else text
        if text not in found and check(text, context, _instructions()).grounded:
            found.append(text)
        if len(found) >= n:
            break
    return found


def _instructions() -> tuple[str, ...]:
    """Every built-in profile's instructions (an explanation may echo none of them)."""
    profiles = builtin_profiles()
    return tuple(t for name in profiles.names() for t in profiles.get(name).instructions())


def training_examples(n_contexts: int, per_context: int = 1, seed: int = 0) -> list[Example]:
    """Template-written examples for ``n_contexts`` seeded contexts."""
    rng = random.Random(seed + 1)
    out = []
    for profile, context in training_contexts(n_contexts, seed):
        for text in explanations(context, rng, per_context):
            out.append(Example(profile, context, text))
    return out


class DatasetError(ValueError):
    """A dataset line that cannot be trained on (the message names the line)."""


def _example(raw: Any, profiles: Iterable[str]) -> Example:
    if not isinstance(raw, dict):
        raise DatasetError("not a JSON object")
    context, text = raw.get("context"), raw.get("explanation")
    profile = raw.get("profile", "default")
    if not isinstance(context, dict) or not isinstance(text, str) or not text.strip():
        raise DatasetError('needs "context" (an object) and "explanation" (a string)')
    if not isinstance(context.get("analysis_type"), str) or not isinstance(
        context.get("metrics"), dict
    ):
        raise DatasetError('the context needs "analysis_type" and "metrics"')
    if profile not in profiles:
        raise DatasetError(f"unknown prompt profile {profile!r}")
    verdict = check(text, context, builtin_profiles().get(profile).instructions())
    if not verdict.grounded:
        raise DatasetError(
            "the explanation fails the grounding checks: " + "; ".join(verdict.failed)
        )
    symbol = str(context.get("symbol") or "")
    if symbol and not text.startswith(symbol):
        raise DatasetError(
            f"the explanation must start with the symbol {symbol!r} (the engine writes it as "
            "the answer's first word)"
        )
    return Example(profile, context, text, str(raw.get("source", "file")))


def load_dataset(path: str | Path) -> list[Example]:
    """The examples of a JSON-lines file; the first bad line raises :class:`DatasetError`
    naming it (``"dataset line 7: ..."``)."""
    profiles = builtin_profiles().names()
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(_example(json.loads(line), profiles))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"dataset line {number}: not JSON ({exc.msg})") from None
            except DatasetError as exc:
                raise DatasetError(f"dataset line {number}: {exc}") from None
    if not out:
        raise DatasetError(f"{path}: no examples")
    return out


def dump_dataset(examples: Iterable[Example], path: str | Path) -> int:
    """Write ``examples`` as JSON lines; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(example.as_json() + "\n")
            n += 1
    return n
