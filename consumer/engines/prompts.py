"""The rendering of an AnalysisContext into a chat prompt.

Upstream never sends a system prompt: it names a *profile* the consumer knows
(:mod:`consumer.engines.profiles`). The context is untrusted data, shown between
``<context_data>`` tags with an instruction that the block is data, in the profile's
``format``:

- ``facts`` (the default): one short plain sentence per fact, each value already formatted
  the way the grounding checker accepts it being quoted (:func:`consumer.core.grounding.facts`,
  which also strips ``<``, ``>``, braces and ``|`` from attribute text and bounds its length);
- ``json``: the context as one JSON object with every ``<``, ``>`` and ``&`` escaped
  (``\\u003c`` ...).

Either way neither the block's closing tag nor a chat-template control token such as
``<|im_end|>`` can appear inside it, so a field saying "ignore previous instructions" stays
data inside the user turn; the system turn is identical for every request of a profile.
With ``anchor`` the assistant turn starts with the context's symbol, so the answer names it.

:class:`ChatPrompter` renders with the model's own chat template (GGUF
``tokenizer.chat_template``) and splits the prompt into the profile's shared prefix (the
same token ids for every request, so its KV can be computed once) and the per-request
suffix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumer.core.grounding import facts
from consumer.engines.profiles import (
    DATA_CLOSE,
    DATA_OPEN,
    DEFAULT_INSTRUCTION,
    PROFILES,
    ProfileSet,
    PromptProfile,
    activate,
    active_profiles,
    builtin_profiles,
    list_profiles,
    load_profiles,
    system_prompt,
)

__all__ = [
    "DATA_CLOSE",
    "DATA_OPEN",
    "DEFAULT_INSTRUCTION",
    "PROFILES",
    "ChatPrompter",
    "EncodedPrompt",
    "ProfileSet",
    "PromptProfile",
    "activate",
    "active_profiles",
    "answer_prefix",
    "build_messages",
    "builtin_profiles",
    "escape_data",
    "list_profiles",
    "load_profiles",
    "render_context",
    "render_facts",
    "system_prompt",
    "user_message",
]

# Marks where the per-request part of the prompt starts when splitting off the prefix.
_SENTINEL = "\x00EXPLAINSTREAM_SPLIT\x00"


def escape_data(value: Any) -> str:
    """JSON text of ``value`` in which no tag or control-token delimiter can appear."""
    text = json.dumps(
        value, ensure_ascii=True, sort_keys=True, allow_nan=False, separators=(",", ":")
    )
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _number(value: Any) -> Any:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return str(f)
    return int(f) if f.is_integer() and abs(f) < 1e15 else f


def _as_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.astimezone(UTC).isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000.0, tz=UTC).isoformat()
    return str(value)


def render_context(context: Mapping[str, Any]) -> str:
    """The AnalysisContext as one escaped JSON object (keys sorted, numbers normalised)."""
    metrics = context.get("metrics") or {}
    attributes = context.get("attributes") or {}
    data: dict[str, Any] = {"analysis_type": str(context.get("analysis_type", ""))}
    if context.get("symbol") is not None:
        data["symbol"] = str(context["symbol"])
    data["metrics"] = {str(k): _number(v) for k, v in dict(metrics).items()}
    if attributes:
        data["attributes"] = {str(k): str(v) for k, v in dict(attributes).items()}
    as_of = _as_of(context.get("as_of"))
    if as_of is not None:
        data["as_of"] = as_of
    return escape_data(data)


def render_facts(context: Mapping[str, Any]) -> str:
    """The context as short plain sentences, one per line (the ``facts`` format)."""
    return "\n".join(facts(context))


def user_message(
    context: Mapping[str, Any], instruction: str = DEFAULT_INSTRUCTION, fmt: str = "facts"
) -> str:
    """The user turn: the profile's instruction, then the delimited data block."""
    body = render_context(context) if fmt == "json" else render_facts(context)
    return instruction + "\n" + DATA_OPEN + "\n" + body + "\n" + DATA_CLOSE


def answer_prefix(profile: PromptProfile, context: Mapping[str, Any]) -> str:
    """The first words of the answer the engine writes itself: the symbol, with ``anchor``."""
    symbol = context.get("symbol")
    if not profile.anchor or not symbol:
        return ""
    text = str(symbol)
    # The symbol was validated upstream (<= 32 chars); keep markup out all the same.
    return "".join(ch for ch in text if ch.isalnum() or ch in ".-/^=")


def _messages(p: PromptProfile, context: Mapping[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": p.system},
        {"role": "user", "content": user_message(context, p.instruction, p.format)},
    ]


def build_messages(
    profile: str, context: Mapping[str, Any], profiles: ProfileSet | None = None
) -> list[dict[str, str]]:
    """Chat messages (system + user) for the high-level chat-completion API."""
    return _messages((profiles or active_profiles()).get(profile), context)


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    """Token ids of one prompt; ``tokens[:prefix_len]`` is the profile's shared prefix."""

    tokens: list[int]
    prefix_len: int
    answer_prefix: str = ""  # text the prompt ends with that belongs to the answer


class ChatPrompter:
    """Renders prompts with a model's chat template and splits off the shared prefix.

    ``tokenize`` turns rendered text (control tokens included) into token ids; without it
    only text rendering is available. ``profiles`` defaults to the active set at
    construction; a prompter keeps the set it was built with (a reload builds a new one).
    """

    def __init__(
        self,
        template: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        tokenize: Callable[[str], list[int]] | None = None,
        profiles: ProfileSet | None = None,
    ) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=eos_token, bos_token=bos_token
        )
        self._tokenize = tokenize
        self.profiles = profiles if profiles is not None else active_profiles()
        self.stop: list[str] = [eos_token] if eos_token else []
        self._prefix_cache: dict[str, tuple[str, list[int]]] = {}

    def render_messages(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Apply the chat template (with the assistant generation prompt)."""
        return self._formatter(messages=list(messages)).prompt  # type: ignore[arg-type]

    def render(self, profile: str, context: Mapping[str, Any], prefix: str | None = None) -> str:
        """The full prompt text for one request, ending with its answer prefix (``prefix``,
        else the profile's anchor)."""
        p = self.profiles.get(profile)
        prompt = self.render_messages(_messages(p, context))
        return prompt + (answer_prefix(p, context) if prefix is None else prefix)

    def _prefix_candidates(self, profile: str) -> list[str]:
        p = self.profiles.get(profile)
        out = []
        for user in (p.user_prefix() + _SENTINEL, _SENTINEL):
            text = self.render_messages(
                [{"role": "system", "content": p.system}, {"role": "user", "content": user}]
            )
            cut = text.find(_SENTINEL)
            if cut > 0:
                out.append(text[:cut])
        return out

    def prefix(self, profile: str) -> tuple[str, list[int]]:
        """The profile's shared prefix text and tokens (empty when none verifies)."""
        cached = self._prefix_cache.get(profile)
        if cached is not None:
            return cached
        if self._tokenize is None:
            raise RuntimeError("ChatPrompter was built without a tokenizer")
        probe = self.render(profile, {"analysis_type": "probe", "metrics": {"x": 1.0}})
        full = self._tokenize(probe)
        chosen: tuple[str, list[int]] = ("", [])
        for text in self._prefix_candidates(profile):
            if not probe.startswith(text):
                continue
            toks = self._tokenize(text)
            # BPE may merge across the cut; only a true token prefix can be shared.
            if toks and full[: len(toks)] == toks:
                chosen = (text, toks)
                break
        self._prefix_cache[profile] = chosen
        return chosen

    def encode(
        self, profile: str, context: Mapping[str, Any], prefix: str | None = None
    ) -> EncodedPrompt:
        """Token ids of the request's prompt and the length of the shared prefix."""
        if self._tokenize is None:
            raise RuntimeError("ChatPrompter was built without a tokenizer")
        _, prefix_tokens = self.prefix(profile)
        tokens = self._tokenize(self.render(profile, context, prefix))
        anchor = answer_prefix(self.profiles.get(profile), context) if prefix is None else prefix
        n = len(prefix_tokens)
        if n and len(tokens) > n and tokens[:n] == prefix_tokens:
            return EncodedPrompt(tokens, n, anchor)
        return EncodedPrompt(tokens, 0, anchor)
