"""Admission: may a decoded request run, and where does its answer go? Pure, no IO.

Checked when a request leaves the buffer, before it reaches the engine (so a request that
is answered without inference never takes an engine slot or a breaker probe):

* EXPIRE when its deadline has passed;
* REJECT an unknown prompt profile, ``max_tokens`` outside ``1..max_tokens_limit``, an
  encoded context over ``max_context_bytes`` (OWASP LLM10: unbounded consumption), or a
  ``reply_to`` outside REPLY_TO_ALLOWED (any producer could otherwise make the consumer
  write into the request topics or the DLQ);
* otherwise RUN.

A REJECTED answer for a forbidden ``reply_to`` goes to the default results topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "Admission",
    "AdmissionLimits",
    "ReplyPolicy",
    "Verdict",
    "admit",
    "context_bytes",
    "destination",
    "reply_policy",
]


class Verdict(StrEnum):
    """What happens to a request at admission."""

    RUN = "run"
    EXPIRE = "expire"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict and, unless RUN, the reason written into the result's ``error``."""

    verdict: Verdict
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """What admission checks against (from Settings and the known prompt profiles)."""

    max_tokens_limit: int
    max_context_bytes: int
    profiles: frozenset[str]
    reply_to_allowed: ReplyPolicy


@dataclass(frozen=True, slots=True)
class ReplyPolicy:
    """Which topics ``reply_to`` may name: exact names or ``prefix*`` patterns, never one of
    the ``forbidden`` topics (the request topics and the DLQ)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...] = ()
    forbidden: frozenset[str] = frozenset()

    def allows(self, topic: str) -> bool:
        """May a result be written to ``topic``?"""
        if topic in self.forbidden:
            return False
        return topic in self.exact or any(topic.startswith(p) for p in self.prefixes)


def reply_policy(
    setting: str | None, *, results_topic: str, topic_prefix: str, forbidden: Iterable[str]
) -> ReplyPolicy:
    """REPLY_TO_ALLOWED as a policy.

    The setting is a comma list of topic names, ``name*`` meaning every topic that starts
    with ``name``. Unset: this deployment's results topics — the default results topic and
    any other ``<KAFKA_TOPIC_PREFIX>.*`` topic (replay and request/reply topics live there);
    the request topics and the DLQ are never allowed.
    """
    if setting is None or not setting.strip():
        return ReplyPolicy(frozenset({results_topic}), (f"{topic_prefix}.",), frozenset(forbidden))
    names = [t.strip() for t in setting.split(",") if t.strip()]
    return ReplyPolicy(
        frozenset(n for n in names if not n.endswith("*")),
        tuple(n[:-1] for n in names if n.endswith("*")),
        frozenset(forbidden),
    )


def context_bytes(context: Mapping[str, Any]) -> int:
    """Size of a context as compact UTF-8 JSON: a stable measure of what reaches the prompt."""
    text = json.dumps(
        context, separators=(",", ":"), sort_keys=True, default=str, ensure_ascii=False
    )
    return len(text.encode())


def admit(
    *,
    remaining_s: float | None,
    prompt_profile: str,
    max_tokens: int,
    context_size: int,
    reply_to: str | None,
    limits: AdmissionLimits,
) -> Admission:
    """Decide RUN, EXPIRE or REJECT for one request (see module docstring)."""
    if remaining_s is not None and remaining_s <= 0:
        return Admission(Verdict.EXPIRE, "deadline passed before inference")
    if reply_to is not None and not limits.reply_to_allowed.allows(reply_to):
        return Admission(Verdict.REJECT, f"reply_to {reply_to!r} is not in REPLY_TO_ALLOWED")
    if prompt_profile not in limits.profiles:
        known = ", ".join(sorted(limits.profiles))
        return Admission(
            Verdict.REJECT, f"unknown prompt_profile {prompt_profile!r} (known: {known})"
        )
    if max_tokens <= 0:
        return Admission(Verdict.REJECT, f"max_tokens {max_tokens} must be positive")
    if max_tokens > limits.max_tokens_limit:
        return Admission(
            Verdict.REJECT,
            f"max_tokens {max_tokens} exceeds the limit {limits.max_tokens_limit}",
        )
    if context_size > limits.max_context_bytes:
        return Admission(
            Verdict.REJECT,
            f"context of {context_size} bytes exceeds MAX_CONTEXT_BYTES={limits.max_context_bytes}",
        )
    return Admission(Verdict.RUN)


def destination(reply_to: str | None, allowed: ReplyPolicy, default: str) -> str:
    """Topic a result goes to: an allowed ``reply_to``, else the default results topic."""
    if reply_to is not None and allowed.allows(reply_to):
        return reply_to
    return default
