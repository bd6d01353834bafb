"""The explanation written from the context alone, grounded by construction.

What ``GROUNDING=repair`` publishes when the model's answers fail the checks: the facts,
each value formatted as the checker accepts it, with the direction of signed metrics and
no interpretation beyond them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumer.core.grounding.values import clean_text, fact_lines, key_words

__all__ = ["repair_prefix", "template_explanation"]


def template_explanation(context: Mapping[str, Any]) -> str:
    """E.g. ``"AAPL, earnings analysis: the price is 187.4; the sentiment score is -0.72,
    negative."``"""
    symbol = ""
    analysis = ""
    parts: list[str] = []
    as_of = ""
    for subject, statement in fact_lines(context):
        if subject == "symbol":
            symbol = statement
        elif subject == "analysis":
            analysis = statement.replace("_", " ")
        elif subject == "as of":
            as_of = statement
        elif statement:
            parts.append(f"the {subject.removeprefix('metric:')} is {statement}")
    head = ", ".join(x for x in (symbol, f"{analysis} analysis" if analysis else "") if x)
    body = "; ".join(parts) if parts else "no metrics were given"
    text = f"{head}: {body}" if head else body[:1].upper() + body[1:]
    if as_of:
        text += f" (as of {as_of})"
    return text + "."


def repair_prefix(context: Mapping[str, Any]) -> str:
    """The first words of a repair attempt: the symbol and the context's first metric, up
    to where its value goes (``"AAPL's sentiment score is"``), so the second answer starts
    on the data."""
    symbol = clean_text(context.get("symbol") or "", 32)
    first = next(iter(dict(context.get("metrics") or {})), None)
    if first is None:
        return symbol
    label = clean_text(" ".join(key_words(str(first))), 64)
    return f"{symbol}'s {label} is" if symbol else f"The {label} is"
