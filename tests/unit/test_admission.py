"""Admission decisions: expire, reject (limits, reply_to, context size), run."""

from __future__ import annotations

from consumer.core.admission import (
    AdmissionLimits,
    Verdict,
    admit,
    context_bytes,
    destination,
    reply_policy,
)

POLICY = reply_policy(
    None,
    results_topic="explain.results",
    topic_prefix="explain",
    forbidden=["explain.requests.urgent", "explain.dlq"],
)
LIMITS = AdmissionLimits(
    max_tokens_limit=512,
    max_context_bytes=300,
    profiles=frozenset({"default", "terse"}),
    reply_to_allowed=POLICY,
)


def check(**overrides: object) -> tuple[Verdict, str | None]:
    values: dict[str, object] = {
        "remaining_s": None,
        "prompt_profile": "default",
        "max_tokens": 100,
        "context_size": 100,
        "reply_to": None,
        "limits": LIMITS,
    }
    values.update(overrides)
    result = admit(**values)  # type: ignore[arg-type]
    return result.verdict, result.reason


def test_a_plain_request_runs() -> None:
    assert check() == (Verdict.RUN, None)
    assert check(remaining_s=0.5, max_tokens=512, context_size=300)[0] is Verdict.RUN


def test_passed_deadline_expires_before_anything_else() -> None:
    verdict, reason = check(remaining_s=0.0, prompt_profile="nope", max_tokens=0)
    assert verdict is Verdict.EXPIRE and "deadline" in (reason or "")


def test_max_tokens_out_of_range_is_rejected() -> None:
    for bad in (0, -5, 513):
        verdict, reason = check(max_tokens=bad)
        assert verdict is Verdict.REJECT and "max_tokens" in (reason or ""), bad


def test_oversized_context_is_rejected() -> None:
    verdict, reason = check(context_size=301)
    assert verdict is Verdict.REJECT and "MAX_CONTEXT_BYTES" in (reason or "")


def test_unknown_profile_is_rejected_naming_the_known_ones() -> None:
    verdict, reason = check(prompt_profile="raw-system-prompt")
    assert verdict is Verdict.REJECT and "default, terse" in (reason or "")


def test_reply_to_default_policy_allows_the_deployment_topics_only() -> None:
    assert check(reply_to="explain.results")[0] is Verdict.RUN
    assert check(reply_to="explain.replay-results")[0] is Verdict.RUN
    for bad in ("explain.requests.urgent", "explain.dlq", "other.results", "explainXresults"):
        verdict, reason = check(reply_to=bad)
        assert verdict is Verdict.REJECT and "REPLY_TO_ALLOWED" in (reason or ""), bad


def test_reply_to_setting_lists_names_and_prefixes() -> None:
    policy = reply_policy(
        " a.results , team-b.* ,",
        results_topic="explain.results",
        topic_prefix="explain",
        forbidden=["explain.dlq"],
    )
    assert policy.allows("a.results") and policy.allows("team-b.x")
    assert not policy.allows("explain.results")  # an explicit list replaces the default
    assert not policy.allows("a.results2")


def test_destination_falls_back_to_the_default_topic() -> None:
    assert destination("explain.replies", POLICY, "explain.results") == "explain.replies"
    assert destination("explain.dlq", POLICY, "explain.results") == "explain.results"
    assert destination(None, POLICY, "explain.results") == "explain.results"


def test_context_bytes_is_stable_and_counts_utf8() -> None:
    a = {"symbol": "AAPL", "metrics": {"x": 1.0, "y": 2.0}}
    b = {"metrics": {"y": 2.0, "x": 1.0}, "symbol": "AAPL"}
    assert context_bytes(a) == context_bytes(b)
    assert context_bytes({"s": "é"}) == len('{"s":"é"}'.encode())
