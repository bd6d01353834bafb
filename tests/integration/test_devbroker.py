"""`explainstream dev-broker`: a real Apache Kafka that starts, restarts and stops cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.dev.devbroker import DevBroker, DevBrokerError, fetch_jars, find_java, free_port_block

pytestmark = pytest.mark.kafka


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", "dev-broker", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def _java_pids_for(data_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "kafka.Kafka" in cmdline and str(data_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


def test_cli_start_twice_status_stop_leaves_no_java(tmp_path: Path) -> None:
    port = str(free_port_block(1))
    data = str(tmp_path / "broker")
    first = _cli("start", "--port", port, "--data-dir", data)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"127.0.0.1:{port}"
    again = _cli("start", "--port", port, "--data-dir", data)
    assert again.returncode == 0 and "already running" in again.stderr
    assert len(_java_pids_for(tmp_path)) == 1
    status = _cli("status", "--port", port, "--data-dir", data)
    assert status.stdout.strip() == f"127.0.0.1:{port}"
    stop = _cli("stop", "--port", port, "--data-dir", data)
    assert stop.returncode == 0
    assert _java_pids_for(tmp_path) == []
    down = _cli("status", "--port", port, "--data-dir", data)
    assert down.returncode == 3 and down.stdout.strip() == "down"


async def test_data_survives_a_restart(tmp_path: Path) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    broker = DevBroker(tmp_path, port=free_port_block(1))
    address = broker.start(quiet=True)
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=address)
        await admin.start()
        await admin.create_topics([NewTopic("kept", 1, 1)])
        await admin.close()
        broker.stop()
        assert broker.start(quiet=True) == address
        admin = AIOKafkaAdminClient(bootstrap_servers=address)
        await admin.start()
        assert "kept" in await admin.list_topics()
        await admin.close()
    finally:
        broker.stop()
    assert _java_pids_for(tmp_path) == []


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(DevBrokerError, match="Java 17"):
        find_java()


def test_missing_maven_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevBrokerError, match="Maven"):
        fetch_jars(tmp_path / "empty-cache", quiet=True)


def test_cli_reports_missing_java_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)
    result = _cli("start", "--port", "1", "--data-dir", str(tmp_path / "d"), env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Java 17" in result.stderr


def test_three_node_cluster_replicates(tmp_path: Path) -> None:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    broker = DevBroker(tmp_path, port=free_port_block(3), brokers=3)
    address = broker.start(quiet=True)

    async def check() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=address)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("replicated", 1, 3)])
            for _ in range(100):  # metadata propagates to every node asynchronously
                desc = await admin.describe_topics(["replicated"])
                if desc[0]["partitions"]:
                    return list(desc[0]["partitions"][0]["replicas"])
                await asyncio.sleep(0.1)
            raise AssertionError("topic metadata never appeared")
        finally:
            await admin.close()

    try:
        replicas = asyncio.run(check())
        assert sorted(replicas) == [1, 2, 3]
        assert len(broker.running_pids()) == 3
    finally:
        broker.stop()
    assert _java_pids_for(tmp_path) == []
