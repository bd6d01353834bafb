"""Claims read out of an explanation: its numbers with their units, its words, its tickers.

Pure text scanning; :mod:`consumer.core.grounding.checks` compares them with the context.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["NumberClaim", "clause_around", "clause_before", "number_claims", "tickers", "words"]

_NUMBER = re.compile(
    r"""
    (?P<sign>(?<![\w.,])[-+\u2212])?
    (?P<cur>[$\u20ac\u00a3])?
    (?<![\d.,])
    (?P<num>\d+(?:\.\d+){2,}|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?P<unit>
        \s?(?:%|percent\b|per\s+cent\b)
      | \s?(?:bps|bp|basis\s+points?)\b
      | x\b
      | \s?(?:thousand|million|billion|trillion|mn|bn|[kKmMbBT])\b
    )?
    """,
    re.VERBOSE,
)
_SCALE = {
    "k": 1e3, "thousand": 1e3, "m": 1e6, "mn": 1e6, "million": 1e6,
    "b": 1e9, "bn": 1e9, "billion": 1e9, "t": 1e12, "trillion": 1e12,
}  # fmt: skip
_WORD = re.compile(r"[A-Za-z][A-Za-z'/-]*[A-Za-z]|[A-Za-z]")
# A ticker-like token: 2-6 capitals (digits after the first allowed), optional ".X" class.
_TICKER = re.compile(r"(?<![A-Za-z0-9.])[A-Z][A-Z0-9]{1,5}(?:\.[A-Z]{1,2})?(?![A-Za-z0-9])")
_CLAUSE_END = re.compile(r"[.,;:!?]\s|\n|\s[-\u2013\u2014]\s|[()]")


@dataclass(frozen=True, slots=True)
class NumberClaim:
    """One number as written: ``magnitude`` is the digits' value (no sign, no scale)."""

    text: str
    magnitude: float
    decimals: int
    sign: int  # -1 or +1 when written, 0 when not
    unit: str  # "", "%", "bps", "x"
    scale: float  # 1, or 1e3 ... 1e12 for "k", "million", ...
    currency: bool
    start: int
    end: int

    @property
    def word_like(self) -> bool:
        """A bare small integer ("two sentences", "Q3", "1st"), not a claim about data."""
        return (
            self.decimals == 0
            and not self.unit
            and self.scale == 1
            and not self.sign
            and not self.currency
            and self.magnitude <= 10
        )


def number_claims(text: str) -> list[NumberClaim]:
    """Every number in ``text`` with its sign, currency, unit and scale."""
    out = []
    for m in _NUMBER.finditer(text):
        digits = m.group("num").replace(",", "")
        # "45.0.184": digits glued by dots are no number a context can support.
        magnitude = float(digits) if digits.count(".") <= 1 else math.nan
        decimals = len(digits.rsplit(".", 1)[1]) if "." in digits else 0
        sign_text = m.group("sign") or ""
        sign = -1 if sign_text in ("-", "\u2212") else 1 if sign_text == "+" else 0
        unit_text = " ".join((m.group("unit") or "").split()).lower()
        unit, scale = "", 1.0
        if unit_text in ("%", "percent", "per cent"):
            unit = "%"
        elif unit_text.startswith(("bp", "basis")):
            unit = "bps"
        elif unit_text == "x":
            unit = "x"
        elif unit_text:
            scale = _SCALE[unit_text]
        out.append(
            NumberClaim(
                text=m.group().strip(),
                magnitude=magnitude,
                decimals=decimals,
                sign=sign,
                unit=unit,
                scale=scale,
                currency=bool(m.group("cur")),
                start=m.start(),
                end=m.end(),
            )
        )
    return out


def words(text: str) -> list[str]:
    """The words of ``text``, lower case, in order."""
    return [w.lower() for w in _WORD.findall(text)]


def tickers(text: str) -> list[str]:
    """Tokens that look like tickers (``ACPL``, ``BRK.B``), in order."""
    return [t for t in _TICKER.findall(text) if sum(c.isalpha() for c in t) >= 2]


def clause_before(text: str, at: int, limit: int = 60) -> str:
    """The part of ``at``'s clause before it (back to a comma, semicolon or sentence end),
    at most ``limit`` characters."""
    head = text[max(0, at - limit) : at]
    ends = list(_CLAUSE_END.finditer(head))
    return head[ends[-1].end() :] if ends else head


def clause_around(text: str, start: int, end: int, limit: int = 60) -> str:
    """``start:end``'s clause: the text before it (as :func:`clause_before`) and after it
    up to the next clause end, at most ``limit`` characters each way."""
    tail = text[end : end + limit]
    stop = _CLAUSE_END.search(tail)
    return clause_before(text, start, limit) + " " + (tail[: stop.start()] if stop else tail)
