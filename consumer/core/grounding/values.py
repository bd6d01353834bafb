"""What a context says, in the forms an explanation may quote it.

One place decides how a value is written (:func:`format_value`), which numbers a context
supports (:func:`context_numbers`) and which words name its metrics (:func:`key_concepts`),
so the prompt's facts, the constrained grammar, the template and the checker cannot drift
apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "CONCEPTS",
    "ContextNumber",
    "allowed_numbers",
    "clean_text",
    "context_numbers",
    "context_words",
    "fact_lines",
    "facts",
    "format_value",
    "key_concepts",
    "key_words",
    "percent_like",
    "percent_units",
]

#: Metric concepts and the words a text names them by ("moving average" for ``sma_50``).
#: A key has a concept when one of its terms is among the key's words.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "price": ("price", "close", "closing price", "share price", "last price"),
    "return": ("return", "returns", "performance"),
    "rsi": ("rsi", "relative strength", "relative strength index"),
    "sentiment": ("sentiment", "sentiment score"),
    "volume": ("volume", "trading volume"),
    "eps": ("eps", "earnings per share"),
    "implied volatility": ("iv", "implied volatility"),
    "iv rank": ("iv rank", "ivr"),
    "volatility": ("volatility", "vol", "hv", "realized volatility", "historical volatility"),
    "moving average": ("moving average", "sma", "ema", "ma"),
    "pe": ("pe", "p/e", "pe ratio", "price-to-earnings", "price to earnings"),
    "yield": ("yield", "dividend yield"),
    "market cap": ("market cap", "market capitalization", "cap"),
    "revenue": ("revenue", "revenues", "sales"),
    "put call": ("put/call", "put-call", "put call", "pcr"),
    "skew": ("skew", "skewness"),
    "open interest": ("open interest", "oi"),
    "beta": ("beta",),
    "delta": ("delta",),
    "gamma": ("gamma",),
    "theta": ("theta",),
    "vega": ("vega",),
    "dividend": ("dividend", "dividends"),
    "surprise": ("surprise", "earnings surprise"),
    "margin": ("margin", "margins"),
    "growth": ("growth",),
    "drawdown": ("drawdown",),
    "macd": ("macd",),
    "spread": ("spread",),
    "momentum": ("momentum",),
}

# Key words after which a value reads as a percentage ("iv_rank" 45 → "45%").
_PERCENT_UNITS = {"pct", "percent", "percentage", "rank", "ivr", "percentile"}
_PERCENT_LIKE = _PERCENT_UNITS | {
    "rate", "yield", "return", "returns", "change", "margin", "growth", "probability",
    "prob", "share", "weight", "iv", "volatility", "vol", "hv", "surprise", "drawdown",
    "ratio", "skew", "roe", "roa", "roi", "payout",
}  # fmt: skip
_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])")
_DIGITS = re.compile(r"\d+(?:\.\d+)?")
# Characters that could open markup or a chat-template token; never shown to the model.
_MARKUP = str.maketrans({c: " " for c in "<>{}|[]\\`"})
_MAX_ATTRIBUTE = 200


def key_words(key: str) -> list[str]:
    """``"sma_50"`` → ``["sma", "50"]``; ``"ivRank"`` → ``["iv", "rank"]`` (lower case)."""
    return [w.lower() for w in _SPLIT.split(key) if w]


def key_concepts(key: str) -> set[str]:
    """The concepts of :data:`CONCEPTS` a metric key names."""
    words = key_words(key)
    joined = " " + " ".join(words) + " "
    return {
        concept
        for concept, terms in CONCEPTS.items()
        if any(f" {term} " in joined for term in terms)
    }


def percent_like(key: str) -> bool:
    """Whether a value of ``key`` may be written as a percentage."""
    return bool(_PERCENT_LIKE & set(key_words(key)))


def percent_units(key: str) -> bool:
    """Whether ``key``'s values are already percentages (``change_pct`` 2.1 is 2.1 %)."""
    return bool(_PERCENT_UNITS & set(key_words(key)))


def format_value(value: float) -> str:
    """A number as the facts show it and an explanation may quote it: six significant
    digits at most, positional, thousands separators from 10,000."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.6g}"
    d = Decimal(text)
    out = format(d, ",f") if abs(value) >= 10_000 else format(d, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return "0" if out in ("-0", "") else out


def _percent_text(key: str, value: float) -> str | None:
    """The percent form the facts add after a value, if any."""
    if not percent_like(key):
        return None
    if percent_units(key):
        return format_value(value) + "%"
    if 0 < abs(value) <= 1:
        return format_value(value * 100) + "%"
    return None


def clean_text(value: Any, limit: int = _MAX_ATTRIBUTE) -> str:
    """Attribute or label text fit to show the model: no markup characters, no control
    characters, one line, at most ``limit`` characters."""
    text = str(value).translate(_MARKUP)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    return text[:limit].rstrip()


def _as_of(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    return None


def _as_of_text(value: Any) -> str | None:
    dt = _as_of(value)
    if dt is not None:
        return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return None if value is None else clean_text(value, 40)


def _metrics(context: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in dict(context.get("metrics") or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def _label(key: str) -> str:
    return clean_text(" ".join(key_words(key)) or key, 64)


def _direction(key: str, value: float) -> str | None:
    words = set(key_words(key))
    if "sentiment" in words:
        if abs(value) < 0.05:
            return "neutral"
        return "positive" if value > 0 else "negative"
    if (key_concepts(key) & {"return", "surprise", "growth"}) or "change" in words:
        return "up" if value > 0 else "down" if value < 0 else None
    return None


def _is_metric(subject: str) -> bool:
    return subject.startswith("metric:")


def fact_lines(context: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(subject, statement) pairs of the context, in the order the facts list them; a
    metric's subject is ``"metric:<label>"``."""
    lines: list[tuple[str, str]] = []
    symbol = context.get("symbol")
    if symbol:
        lines.append(("symbol", clean_text(symbol, 32)))
    lines.append(("analysis", clean_text(context.get("analysis_type", ""), 128)))
    for key, value in sorted(_metrics(context).items()):
        text = format_value(value)
        pct = _percent_text(key, value)
        if pct is not None and pct != text + "%":
            text += f" ({pct})"
        elif pct is not None:
            text = pct
        direction = _direction(key, value)
        if direction is not None:
            text += f", {direction}"
        lines.append(("metric:" + _label(key), text))
    for key, value in sorted(dict(context.get("attributes") or {}).items()):
        lines.append((_label(str(key)), clean_text(value)))
    as_of = _as_of_text(context.get("as_of"))
    if as_of:
        lines.append(("as of", as_of))
    return lines


def facts(context: Mapping[str, Any]) -> list[str]:
    """The context as short plain sentences, each value formatted as it may be quoted."""
    out = []
    for subject, statement in fact_lines(context):
        if subject == "symbol":
            out.append(f"Symbol: {statement}.")
        elif subject == "analysis":
            out.append(f"Analysis: {statement}.")
        elif subject == "as of":
            out.append(f"As of {statement}.")
        else:
            label = subject.removeprefix("metric:")
            out.append(f"{label[:1].upper() + label[1:]} is {statement}.")
    return out


@dataclass(frozen=True, slots=True)
class ContextNumber:
    """A number the context supports: a metric's value (``key`` set) or a number written
    in its keys, attributes, symbol or as_of (``key`` None; sign and unit unknown)."""

    value: float
    key: str | None = None

    @property
    def percent(self) -> bool:
        """Whether it may be quoted with a % sign as it is."""
        return self.key is None or percent_like(self.key)


def _numbers_in(texts: Iterable[str]) -> list[ContextNumber]:
    out = []
    for text in texts:
        for match in _DIGITS.finditer(text):
            out.append(ContextNumber(float(match.group())))
    return out


def context_words(context: Mapping[str, Any]) -> set[str]:
    """Every word of the context's labels and text, lower case (for the ticker check)."""
    texts = [str(context.get("analysis_type", "")), str(context.get("symbol") or "")]
    texts += [str(k) for k in dict(context.get("metrics") or {})]
    for key, value in dict(context.get("attributes") or {}).items():
        texts += [str(key), str(value)[:4096]]
    return {w.lower() for text in texts for w in re.findall(r"[A-Za-z0-9]+", text)}


def context_numbers(context: Mapping[str, Any]) -> list[ContextNumber]:
    """Every number an explanation of ``context`` may quote."""
    numbers = [ContextNumber(v, k) for k, v in _metrics(context).items()]
    texts = [str(context.get("analysis_type", "")), str(context.get("symbol") or "")]
    texts += [str(k) for k in dict(context.get("metrics") or {})]
    for key, value in dict(context.get("attributes") or {}).items():
        texts += [str(key), str(value)[:4096]]
    as_of = context.get("as_of")
    dt = _as_of(as_of)
    if dt is not None:
        dt = dt.astimezone(UTC)
        texts.append(f"{dt.year} {dt.month} {dt.day} {dt.hour} {dt.minute} {dt.isoformat()}")
    elif as_of is not None:
        texts.append(str(as_of))
    return numbers + _numbers_in(texts)


def allowed_numbers(context: Mapping[str, Any]) -> set[str]:
    """The literal number strings the facts show (unsigned; percent forms with their %):
    the only digits the constrained repair may write."""
    out: set[str] = set()
    for key, value in _metrics(context).items():
        out.add(format_value(abs(value)))
        pct = _percent_text(key, abs(value))
        if pct is not None:
            out.add(pct)
    texts = [_label(key) for key in _metrics(context)]
    texts += [statement for subject, statement in fact_lines(context) if not _is_metric(subject)]
    for text in texts:
        out.update(m.group() for m in _DIGITS.finditer(text))
    return {n for n in out if n}
