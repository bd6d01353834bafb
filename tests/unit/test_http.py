"""HTTP surface: health, readiness tied to the breaker, status JSON, admin auth, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from consumer.ops.http import HttpServer, ServiceControl
from consumer.ops.metrics import Metrics
from schemas.errors import ConfigError

TOKEN = "s3cret-token"


class FakeControl:
    """A ServiceControl whose state the test sets directly: the HTTP layer's mapping to
    status codes and bodies. The service's own rules are tested in test_service_probes.py."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.live = True
        self.model_loaded = True
        self.partitions = 3
        self.breaker = "closed"
        self.reloads: list[str | None] = []
        self.warmups = 0
        self.metrics = metrics

    def set_breaker(self, state: str) -> None:
        self.breaker = state
        if self.metrics is not None:
            self.metrics.set_circuit_state(state)

    def is_live(self) -> bool:
        return self.live

    def readiness(self) -> tuple[bool, dict[str, object]]:
        reasons: dict[str, object] = {
            "model_loaded": self.model_loaded,
            "partitions_assigned": self.partitions,
            "breaker_state": self.breaker,
        }
        ok = self.model_loaded and self.partitions > 0 and self.breaker != "open"
        return ok, reasons

    def status(self) -> dict[str, object]:
        return {
            "engine": "fake",
            "model": {"model_name": "fake"},
            "slots": {"busy": 2, "free": 6},
            "tiers": {"high": {"buffered": 4, "in_flight": 2}},
            "lag": {"high": 7},
            "breaker": self.breaker,
            "uptime_s": 12.5,
        }

    async def warmup(self) -> dict[str, object]:
        self.warmups += 1
        return {"warmed": True}

    async def reload(self, model_path: str | None) -> dict[str, object]:
        if model_path == "/nope.gguf":
            raise ConfigError("MODEL_PATH", "no such file '/nope.gguf'")
        self.reloads.append(model_path)
        return {"reloaded": True, "model_path": model_path}

    def admin_stats(self) -> dict[str, object]:
        return {"requests": 10}


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    servers: list[HttpServer] = []

    async def start(control: FakeControl, **kwargs: object) -> str:
        server = HttpServer(control, **kwargs)  # type: ignore[arg-type]
        port = await server.start("127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for s in servers:
        await s.stop()


async def get(url: str, method: str = "GET", **kwargs: object) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, **kwargs) as resp,  # type: ignore[arg-type]
    ):
        body = await resp.json(content_type=None) if resp.status != 404 else {}
        return resp.status, body


def test_fake_control_satisfies_the_protocol():
    assert isinstance(FakeControl(), ServiceControl)


async def test_health_follows_liveness(serve):
    control = FakeControl()
    base = await serve(control, admin_token=None)
    assert (await get(f"{base}/health"))[0] == 200
    control.live = False
    assert (await get(f"{base}/health"))[0] == 503


async def test_ready_flips_with_the_breaker(serve):
    metrics = Metrics(CollectorRegistry())
    control = FakeControl(metrics)
    base = await serve(control, admin_token=None, metrics=metrics)
    status, body = await get(f"{base}/ready")
    assert status == 200
    assert body == {
        "ready": True,
        "model_loaded": True,
        "partitions_assigned": 3,
        "breaker_state": "closed",
    }
    assert metrics.registry.get_sample_value("explainstream_ready") == 1

    control.set_breaker("open")
    status, body = await get(f"{base}/ready")
    assert status == 503
    assert body["breaker_state"] == "open"
    assert metrics.registry.get_sample_value("explainstream_ready") == 0

    control.set_breaker("half_open")
    assert (await get(f"{base}/ready"))[0] == 200
    control.set_breaker("closed")
    assert (await get(f"{base}/ready"))[0] == 200


async def test_not_ready_without_partitions_or_model(serve):
    control = FakeControl()
    base = await serve(control, admin_token=None)
    control.partitions = 0
    status, body = await get(f"{base}/ready")
    assert (status, body["partitions_assigned"]) == (503, 0)
    control.partitions, control.model_loaded = 1, False
    assert (await get(f"{base}/ready"))[0] == 503


async def test_status_is_the_services_json(serve):
    base = await serve(FakeControl(), admin_token=None)
    status, body = await get(f"{base}/status")
    assert status == 200
    assert body["slots"] == {"busy": 2, "free": 6}
    assert body["tiers"]["high"] == {"buffered": 4, "in_flight": 2}
    assert body["uptime_s"] == 12.5


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/admin/warmup"), ("POST", "/admin/reload"), ("GET", "/admin/stats")],
)
async def test_admin_needs_the_token(serve, method, path):
    base = await serve(FakeControl(), admin_token=TOKEN)
    assert (await get(base + path, method))[0] == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await get(base + path, method, headers=wrong))[0] == 401
    basic = {"Authorization": f"Basic {TOKEN}"}
    assert (await get(base + path, method, headers=basic))[0] == 401
    status, _ = await get(base + path, method, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


async def test_admin_routes_work_with_the_token(serve, tmp_path):
    control = FakeControl()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    base = await serve(control, admin_token=TOKEN, model_dir=str(tmp_path))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert await get(f"{base}/admin/warmup", "POST", headers=auth) == (200, {"warmed": True})
    assert control.warmups == 1
    model = str(tmp_path.resolve() / "m.gguf")
    status, body = await get(
        f"{base}/admin/reload", "POST", headers=auth, json={"model_path": model}
    )
    assert (status, body["model_path"]) == (200, model)
    assert (await get(f"{base}/admin/reload", "POST", headers=auth))[0] == 200
    assert control.reloads == [model, None]
    assert await get(f"{base}/admin/stats", headers=auth) == (200, {"requests": 10})


async def test_reload_rejects_bad_bodies_and_maps_config_errors(serve, tmp_path):
    base = await serve(FakeControl(), admin_token=TOKEN, model_dir=str(tmp_path))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{base}/admin/reload"
    assert (await get(url, "POST", headers=auth, data="{not json"))[0] == 400
    assert (await get(url, "POST", headers=auth, json=[1]))[0] == 400
    assert (await get(url, "POST", headers=auth, json={"model_path": 3}))[0] == 400
    status, body = await get(url, "POST", headers=auth, json={"model_path": "nope.gguf"})
    assert status == 400
    assert body["error"].startswith("MODEL_PATH")


async def test_admin_is_disabled_without_a_token(serve):
    base = await serve(FakeControl(), admin_token=None)
    auth = {"Authorization": "Bearer anything"}
    assert (await get(f"{base}/admin/warmup", "POST", headers=auth))[0] == 404
    assert (await get(f"{base}/admin/stats", headers=auth))[0] == 404
    base2 = await serve(FakeControl(), admin_token="")
    assert (await get(f"{base2}/admin/stats", headers=auth))[0] == 404


async def test_metrics_on_the_http_port_when_given(serve):
    metrics = Metrics(CollectorRegistry())
    metrics.request_finished("low", "EXPIRED", 0.0, 3.0, 0, 0)
    base = await serve(FakeControl(), admin_token=None, metrics=metrics)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'llama_requests_total{priority="low",status="EXPIRED"} 1.0' in text
    base2 = await serve(FakeControl(), admin_token=None)
    assert (await get(f"{base2}/metrics"))[0] == 404
