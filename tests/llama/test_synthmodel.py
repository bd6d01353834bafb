"""Synthetic benchmark models: written, quantized by llama.cpp, served by the llama engine."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from consumer.dev.synthmodel import SHAPES, make_synthetic_model
from tests.llama.helpers import request

pytestmark = pytest.mark.llama


def test_the_7b_shape_has_7b_class_weight_count() -> None:
    # Llama-2 7B has 6.74 B weights with its 32,000-token vocabulary; ours uses the bundled
    # tokenizer's 49,152 tokens, which adds 2 x 17,152 x 4096 embedding/output weights.
    assert SHAPES["7b"].n_params(32_000) == 6_738_415_616
    assert SHAPES["7b"].n_params(49_152) == 6_738_415_616 + 2 * 17_152 * 4096


async def test_tiny_synthetic_model_is_quantized_and_served(start_engine, tmp_path) -> None:
    out = tmp_path / "tiny-q8.gguf"
    made = await asyncio.to_thread(make_synthetic_model, out, "tiny", "Q8_0")
    assert made["bytes"] == out.stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))
    engine = await start_engine(model_path=str(out), max_concurrent_requests=4)
    info = engine.model_info()
    assert info.model_name == "explainstream-synthetic-tiny"
    assert info.quantization == "Q8_0"
    results = await asyncio.gather(
        *(engine.generate(request(i, max_tokens=8, ignore_eos=True)) for i in range(4))
    )
    assert [r.completion_tokens for r in results] == [8, 8, 8, 8]
    # The bundled tokenizer and chat template came along: the profile prefix is cached.
    assert engine.stats()["prefix_cache_hits"] >= 4


def test_make_model_cli_prints_one_json_line(tmp_path) -> None:
    out = tmp_path / "tiny-f16.gguf"
    cli = [sys.executable, "-m", "consumer.cli", "bench", "make-model"]
    proc = subprocess.run(
        [*cli, "--shape", "tiny", "--quantization", "F16", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["path"] == str(out) and report["quantization"] == "F16"
    assert "F16 tensors" in proc.stderr


async def test_a_vocab_only_gguf_carries_the_tokenizer_for_make_model(
    start_engine, tmp_path, model_path
) -> None:
    vocab = tmp_path / "vocab.gguf"
    made = await asyncio.to_thread(make_synthetic_model, vocab, "vocab-only")
    assert made["n_vocab"] == 49_152
    assert vocab.stat().st_size < 8 * 2**20 < 90 * 2**20  # far below the bundled package
    out = tmp_path / "tiny-from-vocab.gguf"
    await asyncio.to_thread(make_synthetic_model, out, "tiny", "Q8_0", tokenizer_from=str(vocab))
    engine = await start_engine(model_path=str(out), max_concurrent_requests=2)
    results = await asyncio.gather(
        *(engine.generate(request(i, max_tokens=4, ignore_eos=True)) for i in range(2))
    )
    assert [r.completion_tokens for r in results] == [4, 4]
    # Same tokens for the same prompt as with the bundled model's own tokenizer.
    bundled = await start_engine(max_concurrent_requests=2)
    ctx = request(0).context
    assert engine.render_prompt("default", ctx)[1] == bundled.render_prompt("default", ctx)[1]
    assert engine.stats()["prefix_cache_hits"] >= 2
