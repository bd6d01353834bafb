"""The one-command local runs: `demo`, `bench engine`, their broker (Kafka benches elsewhere)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from consumer.dev.localkafka import local_kafka
from tests.integration.helpers import end_offsets, produce

pytestmark = pytest.mark.kafka


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )


def _env(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "KAFKA_GROUP_ID": f"{topic_prefix}-group",
        "KAFKA_PARTITIONS": "1",
        "N_THREADS": "2",
    }


async def test_demo_on_the_fake_engine_prints_one_line_per_result(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    env = _env(kafka_bootstrap, topic_prefix)
    proc = await asyncio.to_thread(_run, ["demo", "--engine", "fake", "--count", "12"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 12
    assert {line["status"] for line in lines} == {"OK"}
    assert {line["tier"] for line in lines} == {"urgent", "high", "normal", "low"}
    assert "12/12 results" in proc.stderr


@pytest.mark.llama
async def test_demo_runs_the_llama_engine_with_the_bundled_model(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    env = _env(kafka_bootstrap, topic_prefix)
    args = ["demo", "--count", "4", "--max-tokens", "16"]
    proc = await asyncio.to_thread(_run, args, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "engine=llama" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 4
    assert all(line["status"] == "OK" and line["explanation"].strip() for line in lines)
    # At most 16 tokens per generation; a repaired answer (GROUNDING=repair) had two.
    assert all(0 < line["tokens"] <= 16 * line["grounding"]["attempts"] for line in lines)
    assert all(line["grounding"]["grounded"] for line in lines)
    # llama.cpp's own chatter goes through our logging, not straight onto stderr.
    assert "llama_context" not in proc.stderr


@pytest.mark.llama
async def test_bench_engine_reports_both_engines_and_their_ratio() -> None:
    args = ["bench", "engine", "--engines", "llama,sequential", "--concurrency", "1,2"]
    args += ["--max-tokens", "8", "--requests", "2", "--json", "--no-progress"]
    proc = await asyncio.to_thread(_run, args, {"N_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    runs = {(r["engine"], r["concurrency"]): r for r in report["runs"]}
    assert set(runs) == {("llama", 1), ("llama", 2), ("sequential", 1), ("sequential", 2)}
    # ignore_eos: every request produced exactly max_tokens.
    assert all(
        r["completion_tokens"] == 8 * r["requests"] and r["failed"] == 0 for r in runs.values()
    )
    assert set(report["ratio_llama_over_sequential"]) == {"1", "2"}


def test_local_kafka_starts_a_real_broker_and_leaves_nothing(monkeypatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("explainstream-test-*"))
    with local_kafka("test") as bootstrap:
        assert bootstrap is not None
        asyncio.run(_produce_to_new_topic(bootstrap))
        (data_dir,) = set(tmp.glob("explainstream-test-*")) - before
    assert not data_dir.exists()
    port = int(bootstrap.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def _produce_to_new_topic(bootstrap: str) -> None:
    from consumer.kafka.topics import ensure_topics
    from producer_sdk import KafkaConnection

    await ensure_topics(KafkaConnection(bootstrap), ["local-kafka-check"], partitions=1)
    await produce(bootstrap, "local-kafka-check", [(b"k", b"v")])
    assert await end_offsets(bootstrap, "local-kafka-check") == {0: 1}
