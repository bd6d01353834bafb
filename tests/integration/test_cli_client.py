"""``explainstream produce / explain / results`` as a user runs them, against a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer.config import Settings
from consumer.kafka.topics import settings_connection
from schemas.codec import Codec
from schemas.models import ExplanationResult
from tests.integration.test_sdk import CONTEXT, read_all

pytestmark = pytest.mark.kafka


async def cli(
    settings: Settings | None, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if settings is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
        env["KAFKA_TOPIC_PREFIX"] = settings.kafka_topic_prefix
    command = [sys.executable, "-m", "consumer.cli", *args]
    return await asyncio.to_thread(
        subprocess.run, command, input=stdin, capture_output=True, text=True, env=env, timeout=120
    )


async def test_produce_from_a_jsonl_file_prints_ids_in_input_order(
    topics: Settings, tmp_path: Path
) -> None:
    symbols = ["AAPL", "MSFT", "NVDA"]
    path = tmp_path / "contexts.jsonl"
    path.write_text("".join(json.dumps({**CONTEXT, "symbol": s}) + "\n\n" for s in symbols))
    done = await cli(
        topics,
        "produce",
        "--priority",
        "high",
        "--file",
        str(path),
        "--max-tokens",
        "50",
        "--temperature",
        "0.5",
    )
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 3
    records = await read_all(settings_connection(topics), topics.topic("requests.high"), 3)
    requests = [Codec().decode_request(r.value) for r in records]
    assert [r.request_id for r in requests] == ids
    assert [r.context.symbol for r in requests] == symbols
    assert {(r.max_tokens, r.temperature) for r in requests} == {(50, 0.5)}


async def test_produce_from_stdin_with_a_deadline(topics: Settings) -> None:
    done = await cli(
        topics, "produce", "--file", "-", "--deadline-ms", "60000", stdin=json.dumps(CONTEXT) + "\n"
    )
    assert done.returncode == 0, done.stderr
    [record] = await read_all(settings_connection(topics), topics.topic("requests.normal"), 1)
    request = Codec().decode_request(record.value)
    assert request.request_id == done.stdout.strip()
    assert request.deadline is not None
    assert 55 < (request.deadline - request.created_at).total_seconds() <= 60


async def test_explain_then_results(
    make_settings: Callable[..., Settings], topics: Settings
) -> None:
    from consumer.runtime.service import ConsumerService

    async with ConsumerService(make_settings()):
        done = await cli(
            topics,
            "explain",
            "--context",
            json.dumps(CONTEXT),
            "--priority",
            "urgent",
            "--timeout",
            "60",
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "OK"
    assert result["tier"] == "urgent"
    listed = await cli(topics, "results", "--from-beginning")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [line["request_id"] for line in lines] == [result["request_id"]]
    assert list(lines[0]) == list(ExplanationResult.model_fields)
    assert (await cli(topics, "results")).stdout == "", "without --from-beginning: from the end"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["produce", "--context", "{bad"], "invalid JSON"),
        (["produce", "--context", "[1]"], "expected a JSON object"),
        (["produce", "--context", '{"analysis_type": ""}'], "context.analysis_type"),
        (["produce", "--file", "/does/not/exist"], "No such file"),
        (["explain", "--context", '{"analysis_type": "x"}', "--timeout", "1"], "127.0.0.1:9"),
    ],
)
async def test_errors_are_one_line_and_non_zero(args: list[str], message: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        timeout=60,
    )
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
