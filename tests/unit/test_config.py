"""Bad configuration fails at start with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consumer.config import Delivery, EngineKind, Settings
from schemas.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka_topic_prefix == "explain"
    assert s.http_port == 8000 and s.metrics_port == 9090
    assert s.engine is EngineKind.LLAMA and s.delivery is Delivery.AT_LEAST_ONCE
    assert s.request_topics()["urgent"] == "explain.requests.urgent"
    assert s.results_topic == "explain.results" and s.dlq_topic == "explain.dlq"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MAX_CONCURRENT_REQUESTS": "zero"}, "MAX_CONCURRENT_REQUESTS"),
        ({"MAX_CONCURRENT_REQUESTS": "0"}, "MAX_CONCURRENT_REQUESTS"),
        ({"HTTP_PORT": "70000"}, "HTTP_PORT"),
        ({"ENGINE": "gpt"}, "ENGINE"),
        ({"DELIVERY": "maybe-once"}, "DELIVERY"),
        ({"PROMETHEUS_ENABLED": "perhaps"}, "PROMETHEUS_ENABLED"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"MODEL_PATH": "/no/such/model.gguf"}, "MODEL_PATH"),
        ({"MAX_QUEUE_SIZE": "4", "MAX_CONCURRENT_REQUESTS": "8"}, "MAX_QUEUE_SIZE"),
        ({"KAFKA_TOPIC_PREFIX": "bad prefix"}, "KAFKA_TOPIC_PREFIX"),
        ({"REQUEST_TIMEOUT": "-1"}, "REQUEST_TIMEOUT"),
        ({"FLASH_ATTN": "maybe"}, "FLASH_ATTN"),
        ({"FLASH_ATTN": "off", "KV_CACHE_TYPE": "q8_0"}, "FLASH_ATTN"),
        ({"MAX_STEP_MS": "-5"}, "MAX_STEP_MS"),
        ({"BREAKER_MIN_CALLS": "30", "BREAKER_WINDOW": "20"}, "BREAKER_MIN_CALLS"),
        ({"GROUNDING": "sometimes"}, "GROUNDING"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"{variable}:")
    assert info.value.variable == variable


def test_env_values_are_parsed() -> None:
    s = Settings.from_env(
        {"MAX_CONCURRENT_REQUESTS": "16", "PROMETHEUS_ENABLED": "false", "ENGINE": "fake"}
    )
    assert s.max_concurrent_requests == 16 and s.prometheus_enabled is False
    assert s.engine is EngineKind.FAKE


def test_consume_with_bad_config_exits_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "consume"],
        env={"MAX_CONCURRENT_REQUESTS": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MAX_CONCURRENT_REQUESTS" in lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 0),  # CPU-only, f16 KV: off
        ({"KV_CACHE_TYPE": "q8_0"}, -1),  # a quantized V cache needs it: llama.cpp decides
        ({"N_GPU_LAYERS": "-1"}, -1),  # on a GPU llama.cpp decides
        ({"FLASH_ATTN": "on"}, 1),
        ({"FLASH_ATTN": "off", "N_GPU_LAYERS": "-1"}, 0),
    ],
)
def test_flash_attention_follows_the_device_unless_set(env: dict[str, str], expected: int) -> None:
    from consumer.engines.model import flash_attn_type

    assert flash_attn_type(Settings.from_env(env)) == expected


async def test_the_rebalance_timeout_leaves_room_for_the_revoke_drain() -> None:
    """aiokafka's default (the session timeout) evicted a member whose revoke drain ran
    long: its final commit failed and a graceful rebalance answered twice."""
    from consumer.kafka.group import make_consumer

    s = Settings.from_env({"DRAIN_TIMEOUT_S": "60", "KAFKA_SESSION_TIMEOUT_MS": "45000"})
    assert s.rebalance_timeout_ms() == 75_000
    consumer = make_consumer(s, {"bootstrap_servers": "127.0.0.1:1"})
    assert consumer._rebalance_timeout_ms == 75_000  # not started: only the setting
    quick = Settings.from_env({"DRAIN_TIMEOUT_S": "5"})
    assert quick.rebalance_timeout_ms() == quick.kafka_session_timeout_ms
