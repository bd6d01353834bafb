"""The grounding checks: does an explanation say only what its context supports?

:func:`check` reads the claims out of a text (:mod:`.claims`) and compares them with the
context (:mod:`.values`). Each check passes, fails or does not apply; a failure is named
``"<check>: <detail>"``, e.g. ``"number: 2.2%"``. The checks see numbers, names and signs,
not meaning: a text can pass every one and still explain nothing well.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.core.grounding.claims import (
    NumberClaim,
    clause_around,
    clause_before,
    number_claims,
    tickers,
    words,
)
from consumer.core.grounding.values import (
    CONCEPTS,
    ContextNumber,
    context_numbers,
    context_words,
    key_concepts,
    key_words,
)

__all__ = ["ACRONYMS", "CHECKS", "Report", "check"]

#: The checks, in the order a report lists them.
CHECKS = (
    "number", "symbol", "ticker", "markup", "direction", "coverage", "misattribution", "echo",
)  # fmt: skip

#: All-caps words that are not tickers.
ACRONYMS = frozenset((
    "EPS", "IV", "IVR", "HV", "RSI", "ETF", "ETFS", "SMA", "EMA", "MACD", "ATR", "VWAP", "PE",
    "PEG", "PB", "PS", "EV", "EBIT", "EBITDA", "ROE", "ROA", "ROI", "ROIC", "FCF", "DCF", "NAV",
    "AUM", "TTM", "YTD", "QTD", "MTD", "YOY", "QOQ", "MOM", "CAGR", "GDP", "CPI", "PPI", "PMI",
    "FOMC", "FED", "SEC", "IPO", "CEO", "CFO", "CTO", "COO", "ESG", "OTC", "ADR", "ATM", "OTM",
    "ITM", "DTE", "VIX", "OI", "USD", "EUR", "GBP", "JPY", "CNY", "CHF", "US", "USA", "UK",
    "EU", "NYSE", "NASDAQ", "AMEX", "LSE", "FX", "FY", "AI", "API", "UTC", "GMT", "EST", "ET",
    "AM", "PM", "OK", "NA", "NB", "LLC", "INC", "PLC", "LTD", "CO", "CORP", "AND", "THE", "FOR",
    "NOT", "BUY", "SELL", "HOLD", "NEW", "ALL",
))  # fmt: skip
#: Consecutive words an answer may share with its prompt's instructions.
ECHO_WORDS = 6
_LIMIT = 8  # failures listed per report (a long text can fail many times over)
_DETAIL = 60
_MARKUP = re.compile(
    r"[<>{}\[\]|\\`]|context_data|analysis_type|im_start|im_end|endoftext|\"[A-Za-z_]+\"\s*:"
)
_POSITIVE = {"positive", "bullish", "optimistic", "upbeat", "favorable", "favourable"}
_NEGATIVE = {"negative", "bearish", "pessimistic", "downbeat", "unfavorable", "unfavourable"}
_RISE = {"rose", "rise", "rises", "rising", "up", "gain", "gained", "gains", "increase",
         "increased", "increases", "increasing", "higher", "surged", "surge", "grew", "climbed",
         "jumped", "advanced", "rallied", "beat"}  # fmt: skip
_FALL = {"fell", "fall", "falls", "falling", "down", "drop", "dropped", "drops", "decline",
         "declined", "declining", "decrease", "decreased", "decreasing", "lower", "slumped",
         "plunged", "lost", "loss", "slid", "missed", "miss"}  # fmt: skip
_NEGATORS = {"not", "no", "never", "isn't", "wasn't", "aren't", "hardly", "neither", "nor"}
# Concepts a text may name a related metric's value by ("volatility" for implied volatility).
_ALSO = {"implied volatility": {"volatility"}, "iv rank": {"volatility", "implied volatility"},
         "dividend": {"yield"}, "yield": {"dividend"}, "surprise": {"eps"},
         "eps": {"surprise"}}  # fmt: skip
_SIGNED = {"return", "surprise", "growth"}
_TERMS = re.compile(
    "(?<![a-z])("
    + "|".join(
        sorted(
            {re.escape(t) for terms in CONCEPTS.values() for t in terms if len(t) > 2},
            key=len,
            reverse=True,
        )
    )
    + ")(?![a-z])"
)
_TERM_CONCEPT = {t: c for c, terms in CONCEPTS.items() for t in terms}


@dataclass(frozen=True, slots=True)
class Report:
    """The verdict on one text: each check's outcome and the failures, named."""

    outcomes: dict[str, str] = field(default_factory=dict)  # check -> pass | fail | skip
    failed: tuple[str, ...] = ()

    @property
    def grounded(self) -> bool:
        """No check failed."""
        return not self.failed


def _near(x: float, decimals: int, target: float) -> bool:
    """``x`` (written with ``decimals`` decimals) quotes ``target``: within 1 %, or its
    display rounding when that is within 5 % (187 for 187.4, not 1 for 0.72)."""
    if target == 0:
        return x == 0
    diff = abs(x - target)
    if diff <= 0.01 * abs(target):
        return True
    return diff <= 0.5 * 10.0**-decimals * (1 + 1e-9) and diff <= 0.05 * abs(target)


def _targets(claim: NumberClaim, n: ContextNumber) -> Iterable[float]:
    """What the claim's digits should read for it to quote ``n``."""
    mag = abs(n.value)
    if claim.unit == "%":
        if n.percent:
            yield mag
        if n.key is None or mag <= 1:
            yield mag * 100
    elif claim.unit == "bps":
        yield mag * 10_000
        yield mag * 100
        yield mag
    else:
        yield mag / claim.scale
        if claim.scale != 1:
            yield mag


def _quotes(claim: NumberClaim, n: ContextNumber) -> bool:
    if claim.sign and n.key is not None and n.value and (claim.sign < 0) != (n.value < 0):
        return False
    return any(_near(claim.magnitude, claim.decimals, t) for t in _targets(claim, n))


class _Numbers:
    """The context's numbers: metrics scanned, the many free-text numbers bisected."""

    def __init__(self, numbers: Sequence[ContextNumber]) -> None:
        self.metrics = [n for n in numbers if n.key is not None]
        self.free = sorted({n.value for n in numbers if n.key is None})

    def free_quoted(self, claim: NumberClaim) -> bool:
        x = claim.magnitude
        readings: tuple[float, ...]
        if claim.unit == "%":
            readings = (x, x / 100)
        elif claim.unit == "bps":
            readings = (x, x / 100, x / 10_000)
        else:
            readings = (x * claim.scale, x) if claim.scale != 1 else (x,)
        for r in readings:
            lo = bisect.bisect_left(self.free, r / 1.06 - 1e-12)
            hi = bisect.bisect_right(self.free, r / 0.94 + 1e-12)
            if any(_quotes(claim, ContextNumber(v)) for v in self.free[lo:hi]):
                return True
        return False


def _last_concept(text: str) -> str | None:
    found = None
    for m in _TERMS.finditer(text.lower()):
        found = _TERM_CONCEPT.get(m.group(1))
    return found


def _polarity(tokens: list[str], positive: set[str], negative: set[str]) -> tuple[int, int]:
    """(positive, negative) word counts, a negator up to two words before flipping one."""
    pos = neg = 0
    for i, token in enumerate(tokens):
        if token not in positive and token not in negative:
            continue
        flipped = any(t in _NEGATORS or t.endswith("n't") for t in tokens[max(0, i - 2) : i])
        if (token in positive) != flipped:
            pos += 1
        else:
            neg += 1
    return pos, neg


class _Checker:
    def __init__(self, text: str, context: Mapping[str, Any]) -> None:
        self.text = text
        self.context = context
        self.numbers = _Numbers(context_numbers(context))
        self.claims = [c for c in number_claims(text) if not c.word_like]
        self.failed: list[str] = []
        self.outcomes: dict[str, str] = {}
        self.metric_quoted = False

    def verdict(self, name: str, failures: list[str] | None) -> None:
        if failures is None:
            self.outcomes[name] = "skip"
            return
        self.outcomes[name] = "fail" if failures else "pass"
        for detail in failures:
            entry = f"{name}: {detail[:_DETAIL]}"
            if entry not in self.failed:
                self.failed.append(entry)

    def numbers_and_attribution(self) -> None:
        unsupported: list[str] = []
        misattributed: list[str] = []
        signs: list[str] = []
        for claim in self.claims:
            if claim.magnitude != claim.magnitude:  # dotted digits: only as the context has them
                if claim.text.strip("$%+-\u2212 ") not in self._context_text():
                    unsupported.append(claim.text)
                continue
            metrics = [n for n in self.numbers.metrics if _quotes(claim, n)]
            free = self.numbers.free_quoted(claim)
            if not metrics and not free:
                unsupported.append(claim.text)
                continue
            if not metrics:
                continue
            self.metric_quoted = True
            if free:
                continue  # also a number of the labels or attributes: no single owner
            misattributed += self._misattributed(claim, metrics)
            signs += self._wrong_way(claim, metrics)
        self.verdict("number", unsupported if self.claims else None)
        self.verdict("misattribution", misattributed if self.metric_quoted else None)
        self._signs = signs

    def _context_text(self) -> str:
        c = self.context
        parts = [str(c.get("analysis_type", "")), str(c.get("symbol") or ""), str(c.get("as_of"))]
        for key, value in dict(c.get("attributes") or {}).items():
            parts += [str(key), str(value)]
        return " ".join(parts + [str(k) for k in dict(c.get("metrics") or {})])

    def _misattributed(self, claim: NumberClaim, metrics: list[ContextNumber]) -> list[str]:
        owners: set[str] = set()
        for n in metrics:
            for concept in key_concepts(n.key or ""):
                owners |= {concept} | _ALSO.get(concept, set())
        named = _last_concept(clause_before(self.text, claim.start))
        if named is None or named in owners or (named == "price" and claim.unit == "%"):
            return []
        others = {c for n in self.numbers.metrics for c in key_concepts(n.key or "")}
        if not owners and named not in others:
            return []
        keys = ", ".join(sorted({n.key or "" for n in metrics}))
        return [f"{claim.text} called {named} ({keys})"]

    def _wrong_way(self, claim: NumberClaim, metrics: list[ContextNumber]) -> list[str]:
        signed = [
            n
            for n in metrics
            if n.value
            and (key_concepts(n.key or "") & _SIGNED or "change" in key_words(n.key or ""))
        ]
        if not signed or len({n.value > 0 for n in signed}) != 1:
            return []
        rise, fall = _polarity(
            words(clause_around(self.text, claim.start, claim.end)), _RISE, _FALL
        )
        up = signed[0].value > 0
        if (up and fall and not rise) or (not up and rise and not fall):
            return [f"{signed[0].key} {claim.text} described as {'down' if up else 'up'}"]
        return []

    def direction(self) -> None:
        failures = list(self._signs)
        applies = bool(self._signs)
        for n in self.numbers.metrics:
            if "sentiment" not in key_words(n.key or "") or abs(n.value) < 0.05:
                continue
            applies = True
            right, wrong = (_POSITIVE, _NEGATIVE) if n.value > 0 else (_NEGATIVE, _POSITIVE)
            sentences = re.split(r"(?<=[.!?])\s+|\n", self.text)
            bad = False
            total_right = total_wrong = 0
            for sentence in sentences:
                tokens = words(sentence)
                r, w = _polarity(tokens, right, wrong)
                total_right, total_wrong = total_right + r, total_wrong + w
                bad = bad or ("sentiment" in tokens and w > 0 and r == 0)
            if bad or (total_wrong and not total_right):
                way = "negative" if n.value > 0 else "positive"
                failures.append(f"{n.key} {n.value:g} described as {way}")
            break
        self.verdict("direction", failures if applies else None)

    def symbol_and_tickers(self) -> None:
        symbol = str(self.context.get("symbol") or "")
        if symbol:
            named = re.search(
                r"(?<![A-Za-z0-9])" + re.escape(symbol) + r"(?![A-Za-z0-9])",
                self.text,
                re.IGNORECASE,
            )
            self.verdict("symbol", [] if named else [f"{symbol} not named"])
        else:
            self.verdict("symbol", None)
        known = context_words(self.context)
        strangers = []
        for token in tickers(self.text):
            if token.upper() == symbol.upper() or token in ACRONYMS:
                continue
            if all(part.lower() in known for part in token.split(".")):
                continue
            if token not in strangers:
                strangers.append(token)
        self.verdict("ticker", strangers)

    def markup(self) -> None:
        leaks = [m.group() for m in _MARKUP.finditer(self.text)]
        self.verdict("markup", list(dict.fromkeys(leaks)))

    def echo(self, prompt: Sequence[str]) -> None:
        """The answer repeats the prompt's instructions (a run of :data:`ECHO_WORDS` words
        of the system prompt or the instruction): it explains nothing, and a reader takes
        the instructions for a claim."""
        if not prompt:
            self.verdict("echo", None)
            return
        said = words(self.text.lower())
        runs = {tuple(said[i : i + ECHO_WORDS]) for i in range(len(said) - ECHO_WORDS + 1)}
        for text in prompt:
            theirs = words(text.lower())
            for i in range(len(theirs) - ECHO_WORDS + 1):
                run = tuple(theirs[i : i + ECHO_WORDS])
                if run in runs:
                    self.verdict("echo", [" ".join(run)])
                    return
        self.verdict("echo", [])

    def coverage(self) -> None:
        keys = [n.key or "" for n in self.numbers.metrics]
        if not keys:
            self.verdict("coverage", None)
            return
        if self.metric_quoted:
            self.verdict("coverage", [])
            return
        lower = self.text.lower()
        said = set(words(lower))
        for key in keys:
            if key_concepts(key) and _named_concept(lower, key_concepts(key)):
                self.verdict("coverage", [])
                return
            if any(len(w) >= 4 and not w.isdigit() and w in said for w in key_words(key)):
                self.verdict("coverage", [])
                return
        self.verdict("coverage", ["no metric of the context cited"])


def _named_concept(lower: str, concepts: set[str]) -> bool:
    return any(_TERM_CONCEPT.get(m.group(1)) in concepts for m in _TERMS.finditer(lower))


def check(text: str, context: Mapping[str, Any], prompt: Sequence[str] = ()) -> Report:
    """Check ``text`` against ``context`` (the AnalysisContext as a dict); ``prompt`` is the
    instruction text the model was given (system prompt, instruction), for ``echo``."""
    checker = _Checker(text, context)
    checker.numbers_and_attribution()
    checker.symbol_and_tickers()
    checker.markup()
    checker.direction()
    checker.coverage()
    checker.echo(prompt)
    outcomes = {name: checker.outcomes.get(name, "skip") for name in CHECKS}
    return Report(outcomes=outcomes, failed=tuple(checker.failed[:_LIMIT]))
