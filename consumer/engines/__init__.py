"""Inference engines behind one seam (:mod:`consumer.engines.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from consumer.engines.base import Engine, GenerationRequest, GenerationResult, ModelInfo

if TYPE_CHECKING:
    from consumer.config import Settings

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "ModelInfo", "create_engine"]


def create_engine(settings: Settings) -> Engine:
    """Build the engine ENGINE names; heavy imports happen only for the chosen one.

    The prompt profiles (built-in plus PROMPT_PROFILES_PATH) are loaded and activated
    first, so a bad profile file fails here with ConfigError naming the profile.
    """
    from consumer.engines import prompts

    prompts.activate(prompts.load_profiles(settings.prompt_profiles_path))
    kind = settings.engine.value
    if kind == "fake":
        from consumer.engines.fake import FakeEngine

        return FakeEngine(settings)
    if kind == "llama":
        from consumer.engines.llama import LlamaEngine

        return cast(Engine, LlamaEngine(settings))
    from consumer.engines.sequential import SequentialEngine

    return cast(Engine, SequentialEngine(settings))
