"""Fine-tuning end to end on a tiny synthetic model: dataset, training, GGUF, serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consumer.config import Settings
from consumer.dev.finetune import FinetuneSettings, finetune
from consumer.dev.finetune_data import load_dataset
from consumer.dev.finetune_train import TrainSettings
from consumer.dev.gguf_meta import gguf_fields
from consumer.dev.synthmodel import make_synthetic_model
from consumer.engines.model import file_sha256
from consumer.kafka.topics import ensure_service_topics
from consumer.runtime.service import ConsumerService
from schemas.models import ResultStatus
from tests.integration.helpers import collect, make_request, produce_requests

pytestmark = pytest.mark.llama

TOKEN = "finetune-test-token"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("finetune")
    base = folder / "tiny.gguf"
    make_synthetic_model(base, "tiny", "Q8_0")
    settings = FinetuneSettings(
        out=str(folder / "tuned.gguf"),
        base=str(base),
        contexts=12,
        held_out=0.25,
        quantization="Q8_0",
        train=TrainSettings(epochs=2, learning_rate=1e-3, threads=2, seed=5),
    )
    record = finetune(settings, say=lambda _m: None)
    return {**record, "base_path": str(base)}


def _meta(path: str) -> dict[str, Any]:
    return {key: value for key, value, _t, _s in gguf_fields(path, lambda _k: True)}


def test_training_lowers_the_held_out_loss_and_the_file_says_where_it_came_from(
    tuned: dict[str, Any],
) -> None:
    losses = [row["held_out"] for row in tuned["losses"]]
    assert len(losses) == 3  # before training, after each of two epochs
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(row["train"] is not None for row in tuned["losses"][1:])
    meta = _meta(tuned["out"])
    base = _meta(tuned["base_path"])
    assert meta["explainstream.finetune.base_sha256"] == file_sha256(tuned["base_path"])
    assert meta["explainstream.finetune.dataset_sha256"] == tuned["dataset_sha256"]
    assert '"learning_rate": 0.001' in meta["explainstream.finetune.settings"]
    assert meta["general.name"].endswith("explainstream-ft")
    assert meta["llama.context_length"] == base["llama.context_length"]  # not the row length
    assert meta["tokenizer.chat_template"] == base["tokenizer.chat_template"]
    assert meta["general.file_type"] == 7  # Q8_0
    examples = load_dataset(tuned["dataset"])  # what it trained on passes the checks
    assert len(examples) == tuned["examples"] >= 10


def test_same_seed_same_dataset_and_losses(tuned: dict[str, Any], tmp_path: Path) -> None:
    again = finetune(
        FinetuneSettings(
            out=str(tmp_path / "again.gguf"),
            base=tuned["base_path"],
            contexts=12,
            held_out=0.25,
            quantization="Q8_0",
            train=TrainSettings(epochs=1, learning_rate=1e-3, threads=2, seed=5),
        ),
        say=lambda _m: None,
    )
    assert again["dataset_sha256"] == tuned["dataset_sha256"]
    # The held-out loss before training is a property of the base and the split alone.
    assert again["losses"][0]["held_out"] == pytest.approx(tuned["losses"][0]["held_out"], 1e-4)


@pytest.mark.kafka
async def test_the_tuned_model_answers_through_kafka_after_a_hot_reload_to_it(
    tuned: dict[str, Any], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        engine="llama",
        model_path=tuned["base_path"],
        max_concurrent_requests=2,
        n_threads=2,
        admin_token=TOKEN,
        model_dir=str(Path(tuned["out"]).parent),  # where a reload may take a model from
    )
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    topic = settings.request_topics()["normal"]
    async with ConsumerService(settings) as service:
        await produce_requests(boot, topic, [make_request(i, max_tokens=8) for i in range(2)])
        before = await collect(boot, settings.results_topic, 2, timeout_s=120)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{service.http_port}/admin/reload",
                headers={"Authorization": f"Bearer {TOKEN}"},
                json={"model_path": tuned["out"]},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            reload = await resp.json()
        await produce_requests(boot, topic, [make_request(i, max_tokens=8) for i in range(2, 4)])
        results = await collect(boot, settings.results_topic, 4, timeout_s=120)
    assert reload["model_name"].endswith("explainstream-ft")
    sha = await asyncio.to_thread(file_sha256, tuned["out"])
    after = [r for r in results if r.request_id not in {b.request_id for b in before}]
    assert len(after) == 2
    for r in after:
        assert r.status is ResultStatus.OK, r.error
        assert r.model_info.model_sha256 == sha
        assert r.model_info.model_name.endswith("explainstream-ft")
        assert r.model_info.quantization == "Q8_0"
        assert r.grounding is not None and r.grounding.grounded
    assert all(b.model_info.model_sha256 != sha for b in before)
