"""Grounding: whether an explanation says only what its analysis context supports.

Pure (no engine, no Kafka): :func:`check` compares a text's numbers, names, tickers,
markup and directions with the context and names what fails; :func:`facts` and
:func:`allowed_numbers` are how the prompt and the constrained repair present the same
values; :func:`template_explanation` writes an explanation grounded by construction.
"""

from consumer.core.grounding.checks import ACRONYMS, CHECKS, Report, check
from consumer.core.grounding.template import repair_prefix, template_explanation
from consumer.core.grounding.values import (
    allowed_numbers,
    context_numbers,
    facts,
    format_value,
)

__all__ = [
    "ACRONYMS",
    "CHECKS",
    "Report",
    "allowed_numbers",
    "check",
    "context_numbers",
    "facts",
    "format_value",
    "repair_prefix",
    "template_explanation",
]
