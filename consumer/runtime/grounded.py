"""The GROUNDING policy: check a finished explanation, repair it once, or replace it.

``ground`` runs after the engine returned an OK generation:

- ``off``: published as generated, no verdict (``grounding`` is null);
- ``flag``: checked; published as generated with the verdict;
- ``repair`` (default): checked; on a failure the model writes it again once, at
  temperature 0 and under a grammar in which digits can only form the context's own
  formatted numbers and no markup character can appear; if that fails too, or no time is
  left before the deadline, a deterministic explanation written from the context by a
  template (grounded by construction) is published.

``failed_checks`` lists what the model's attempts failed, so a template answer says why it
replaced the model's; ``grounded`` is about the published text. The checks themselves are
pure (:mod:`consumer.core.grounding`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from consumer.config import GroundingPolicy
from consumer.core.grounding import (
    Report,
    allowed_numbers,
    check,
    repair_prefix,
    template_explanation,
)
from consumer.engines.base import Engine, GenerationRequest, GenerationResult
from consumer.engines.profiles import prompt_instructions
from schemas.models import Grounding, GroundingSource

__all__ = ["GroundedAnswer", "GroundingPolicy", "ground", "number_grammar"]

log = logging.getLogger("explainstream.grounding")

# Characters the constrained repair may write outside a number: anything but digits, % (only
# after a number whose percent form the facts show) and the markup of the data block or JSON.
_FREE = r"[^0-9%<>{}|\[\]\\]"
_END = r"[^0-9%<>{}|\[\]\\.,]"


@dataclass(frozen=True, slots=True)
class GroundedAnswer:
    """What to publish: ``result.text`` is the model's or the template's text; token counts
    and times add up every generation made for it."""

    result: GenerationResult
    grounding: Grounding | None
    reports: tuple[Report, ...] = ()  # the checks of each model answer, in order


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def number_grammar(context: dict[str, object]) -> str:
    """GBNF under which digits only form the context's own numbers (never two in a row) and
    none of ``< > { } [ ] | \\`` appears."""
    numbers = sorted({n for n in allowed_numbers(context) if n}, key=lambda n: (-len(n), n))
    if not numbers:
        return f"root ::= {_FREE}*\n"
    alternatives = " | ".join(_gbnf_literal(n) for n in numbers)
    # After a number: a character that cannot extend it ("45" "." "0.184" would read as
    # 45.0.184), or "." / "," followed by one; a last "." may end the text.
    return (
        f"root ::= ch* (num tail ch*)* (num [.,]?)?\nch ::= {_FREE}\n"
        f"tail ::= end | [.,] end\nend ::= {_END}\nnum ::= {alternatives}\n"
    )


def _add(a: GenerationResult, b: GenerationResult | None, text: str) -> GenerationResult:
    if b is None:
        return replace(a, text=text)
    return GenerationResult(
        text=text,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        finish_reason=b.finish_reason,
        confidence_score=b.confidence_score,
        processing_time_ms=a.processing_time_ms + b.processing_time_ms,
        compute_ms=a.compute_ms + b.compute_ms,
    )


def _merged(*reports: Report) -> list[str]:
    seen: dict[str, None] = {}
    for report in reports:
        for failed in report.failed:
            seen.setdefault(failed, None)
    return list(seen)


async def _repair(
    engine: Engine, request: GenerationRequest, first: GenerationResult, timeout_s: float
) -> GenerationResult | None:
    """The constrained second attempt, or None when there is no time or it fails."""
    remaining = request.remaining_s()
    budget = timeout_s if remaining is None else min(timeout_s, remaining)
    # A repair costs about what the first attempt did; without that much time, don't start.
    if budget <= first.processing_time_ms / 1000.0:
        return None
    again = replace(
        request,
        request_id=request.request_id + "#repair",
        temperature=0.0,
        seed=None,
        grammar=number_grammar(request.context),
        answer_prefix=repair_prefix(request.context),
    )
    try:
        second = await asyncio.wait_for(engine.generate(again), budget)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the template still answers; the request is not at fault
        log.info("request %s: repair attempt gave up: %r", request.request_id, exc)
        return None
    return second if second.finish_reason != "deadline" else None


async def ground(
    engine: Engine,
    request: GenerationRequest,
    first: GenerationResult,
    policy: GroundingPolicy,
    *,
    timeout_s: float = 60.0,
) -> GroundedAnswer:
    """Apply ``policy`` to the engine's OK answer ``first`` (see module docstring).

    ``timeout_s`` bounds the repair attempt (REQUEST_TIMEOUT), as does the request's
    deadline.
    """
    if policy is GroundingPolicy.OFF:
        return GroundedAnswer(first, None)
    prompt = prompt_instructions(request.prompt_profile)
    report = check(first.text, request.context, prompt)
    if report.grounded:
        return GroundedAnswer(first, Grounding(grounded=True, attempts=1), (report,))
    if policy is GroundingPolicy.FLAG:
        flagged = Grounding(grounded=False, failed_checks=list(report.failed), attempts=1)
        return GroundedAnswer(first, flagged, (report,))
    second = await _repair(engine, request, first, timeout_s)
    reports: tuple[Report, ...] = (report,)
    if second is not None:
        again = check(second.text, request.context, prompt)
        reports = (report, again)
        if again.grounded:
            repaired = Grounding(grounded=True, failed_checks=list(report.failed), attempts=2)
            return GroundedAnswer(_add(first, second, second.text), repaired, reports)
        failed = _merged(report, again)
    else:
        failed = _merged(report)
    text = template_explanation(request.context)
    # The template is grounded by construction; the verdict is still measured, not assumed.
    verdict = check(text, request.context, prompt)
    templated = Grounding(
        grounded=verdict.grounded,
        failed_checks=failed + [f for f in verdict.failed if f not in failed],
        attempts=1 if second is None else 2,
        source=GroundingSource.TEMPLATE,
    )
    published = replace(_add(first, second, text), confidence_score=None)
    return GroundedAnswer(published, templated, reports)
