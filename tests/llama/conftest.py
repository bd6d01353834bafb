"""Fixtures for tests that run the real bundled model (SmolLM2-135M-Instruct GGUF)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("llama_cpp")

from consumer.config import Settings
from consumer.engines.model import default_model_path


@pytest.fixture(scope="session")
def model_path() -> str:
    try:
        return default_model_path()
    except Exception as exc:  # pragma: no cover - environment without the model package
        pytest.skip(f"bundled model unavailable: {exc}")


@pytest.fixture
def settings_factory(model_path: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"max_concurrent_requests": 8, "n_threads": 2}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest_asyncio.fixture
async def start_engine(settings_factory) -> AsyncIterator[Callable[..., Any]]:
    """``await start_engine(kind="llama", **settings)`` -> a started engine, stopped after."""
    from consumer.engines.llama import LlamaEngine
    from consumer.engines.sequential import SequentialEngine

    started: list[Any] = []

    async def start(kind: str = "llama", **overrides: Any) -> Any:
        cls = LlamaEngine if kind == "llama" else SequentialEngine
        engine = cls(settings_factory(**overrides))
        await engine.start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        await engine.stop()
