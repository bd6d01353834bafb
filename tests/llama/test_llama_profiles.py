"""Prompt profiles from PROMPT_PROFILES_PATH on the real model: served, prefix-cached, reloaded."""

from __future__ import annotations

import asyncio
import json

import pytest

from consumer.config import Settings
from consumer.engines import create_engine
from consumer.engines.base import GenerationRequest
from consumer.engines.prompts import DATA_OPEN, activate, active_profiles, list_profiles
from schemas.errors import ConfigError
from tests.llama.helpers import request

pytestmark = pytest.mark.llama

CRYPTO = "You are a crypto market analyst. Explain on-chain and market metrics in two sentences."


@pytest.fixture(autouse=True)
def _restore_active_profiles():
    before = active_profiles()
    yield
    activate(before)


def write(path, spec) -> str:
    path.write_text(json.dumps(spec))
    return str(path)


async def test_a_custom_profile_is_served_with_its_prefix_cached(start_engine, tmp_path) -> None:
    path = write(
        tmp_path / "profiles.json",
        {"crypto": {"system": CRYPTO, "instruction": "Explain these crypto metrics."}},
    )
    engine = await start_engine(prompt_profiles_path=path)
    assert list_profiles() == ["crypto", "default", "options"]
    text, enc = engine.render_prompt("crypto", request(0).context)
    assert text.startswith("<|im_start|>system\n" + CRYPTO + "<|im_end|>\n")
    assert "Explain these crypto metrics.\n" + DATA_OPEN in text
    assert enc.prefix_len > 0
    before = engine.stats()["prefix_cache_hits"]
    results = await asyncio.gather(
        *(engine.generate(request(i, prompt_profile="crypto", max_tokens=12)) for i in range(3))
    )
    assert all(r.completion_tokens > 0 and r.text for r in results)
    assert engine.stats()["prefix_cache_hits"] == before + 3


async def test_profile_sampling_defaults_reach_the_sampler(start_engine, tmp_path) -> None:
    # top_k 1 makes sampling at any temperature and seed pick the step's most likely token.
    # That is all it promises: the logits themselves round differently with the batch's
    # composition (docs/manual/engines.md, "Greedy determinism"), so each hot request runs
    # alone, in the same batch shape as the greedy one, and only the seed and temperature differ.
    path = write(tmp_path / "p.json", {"pinned": {"system": CRYPTO, "top_k": 1}})
    engine = await start_engine(prompt_profiles_path=path)

    def pinned(temperature: float, seed: int | None = None) -> GenerationRequest:
        return request(
            0,
            prompt_profile="pinned",
            max_tokens=16,
            ignore_eos=True,
            temperature=temperature,
            seed=seed,
        )

    greedy = await engine.generate(pinned(0.0))
    for seed in range(3):
        hot = await engine.generate(pinned(1.5, seed))
        assert hot.text == greedy.text, f"seed {seed}"


async def test_a_bad_profile_file_fails_at_start_naming_the_profile(tmp_path) -> None:
    path = write(tmp_path / "p.json", {"crypto": {"system": CRYPTO, "top_p": 2}})
    with pytest.raises(ConfigError, match="PROMPT_PROFILES_PATH: profile 'crypto'"):
        create_engine(Settings(engine="llama", prompt_profiles_path=path))


async def test_reload_reads_the_profile_file_again(start_engine, tmp_path) -> None:
    path = tmp_path / "p.json"
    write(path, {"crypto": {"system": CRYPTO}})
    engine = await start_engine(prompt_profiles_path=str(path))
    write(path, {"crypto": {"system": CRYPTO}, "rates": {"system": "You explain rates."}})
    await engine.reload()
    assert "rates" in list_profiles()
    result = await engine.generate(request(1, prompt_profile="rates", max_tokens=6))
    assert result.completion_tokens > 0
    assert "rates" in engine.stats()["prompt_profiles"]
    # A broken file is refused and changes nothing.
    write(path, {"rates": {"instruction": "no system"}})
    write(path, {"broken": {"instruction": "no system"}})
    with pytest.raises(ConfigError, match="'broken'"):
        await engine.reload()
    assert "rates" in list_profiles()
    assert (await engine.generate(request(2, prompt_profile="rates", max_tokens=4))).text
