"""`pip install .` without extras gives upstream services a working SDK and nothing heavy."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from consumer.config import Settings
from tests.integration.helpers import CODEC, collect

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, sys
    from producer_sdk import ExplanationProducer, KafkaConnection

    for heavy in ("llama_cpp", "aiohttp", "prometheus_client", "pynvml"):
        assert importlib.util.find_spec(heavy) is None, heavy + " came with the base install"

    async def main() -> None:
        conn = KafkaConnection(sys.argv[1])
        async with ExplanationProducer(conn, topic_prefix=sys.argv[2], source="sdk-venv") as p:
            rid = await p.submit(
                {"analysis_type": "sentiment", "symbol": "AAPL",
                 "metrics": {"sentiment_score": 0.75}},
                priority="high",
            )
        print(rid)

    asyncio.run(main())
    """
)


async def test_base_install_submits_a_request(tmp_path: Path, topics: Settings) -> None:
    kafka_bootstrap, topic_prefix = topics.kafka_bootstrap_servers, topics.kafka_topic_prefix
    env_dir = tmp_path / "venv"
    await asyncio.to_thread(venv.create, env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = await asyncio.to_thread(
        subprocess.run,
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    run = await asyncio.to_thread(
        subprocess.run,
        [str(py), "-c", SCRIPT, kafka_bootstrap, topic_prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # not the repo: import the installed packages
    )
    assert run.returncode == 0, run.stderr[-2000:]
    request_id = run.stdout.strip()
    records = await collect(
        kafka_bootstrap, f"{topic_prefix}.requests.high", 1, decode=CODEC.decode_request
    )
    assert [r.request_id for r in records] == [request_id]
    assert records[0].source == "sdk-venv"
