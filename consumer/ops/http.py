"""The consumer's HTTP surface (aiohttp): health, readiness, status, admin, metrics.

GET /health, GET /ready (503 with the reasons when not ready), GET /status; admin routes
(POST /admin/warmup, POST /admin/reload, GET /admin/stats) need ``Authorization: Bearer
$ADMIN_TOKEN`` and do not exist (404) when no token is configured; a reload's ``model_path``
must be a ``.gguf`` file under ``model_dir`` (MODEL_DIR); GET /metrics when a
:class:`~consumer.ops.metrics.Metrics` is given.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from consumer.ops.metrics import Metrics
from schemas.errors import ConfigError, ExplainstreamError, ValidationError

__all__ = ["HttpServer", "ReloadRefused", "ServiceControl", "model_file_under"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@runtime_checkable
class ServiceControl(Protocol):
    """What the HTTP server needs from the running service."""

    def is_live(self) -> bool:
        """False once the service is broken beyond repair (the pod should restart)."""
        ...

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, reasons): model_loaded, partitions_assigned, breaker_state, ..."""
        ...

    def status(self) -> dict[str, object]:
        """Engine, model, slots, per-tier buffered/in-flight, lag, breaker, uptime_s."""
        ...

    async def warmup(self) -> dict[str, object]:
        """Run a warm-up generation; returns what happened."""
        ...

    async def reload(self, model_path: str | None) -> dict[str, object]:
        """Drain, swap the model (``None``: reload the current path), resume."""
        ...

    def admin_stats(self) -> dict[str, object]:
        """Detailed counters for operators."""
        ...


class ReloadRefused(Exception):
    """A reload's model_path is not a model file under MODEL_DIR (HTTP ``status``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def model_file_under(model_dir: str | None, model_path: str) -> Path:
    """The real path of ``model_path`` (relative: to ``model_dir``) if it is a ``.gguf``
    file inside ``model_dir`` after resolving symlinks and ``..``; else ReloadRefused.

    Without a model directory no path is accepted: an admin token must not be a way to read
    (and hash) any file the process can open.
    """
    if not model_dir:
        raise ReloadRefused(403, "MODEL_DIR is not set: reload takes no model_path")
    base = Path(os.path.realpath(model_dir))
    real = Path(os.path.realpath(base / model_path))  # an absolute model_path replaces base
    if real != base and base not in real.parents:
        raise ReloadRefused(403, f"model_path {model_path!r} is outside MODEL_DIR")
    if real.suffix.lower() != ".gguf":
        raise ReloadRefused(400, f"model_path {model_path!r} is not a .gguf file")
    if not real.is_file():
        raise ReloadRefused(400, f"MODEL_PATH: no such model file {model_path!r} in MODEL_DIR")
    return real


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str), status=status, content_type="application/json"
    )


class HttpServer:
    """aiohttp server over a :class:`ServiceControl`; ``admin_token`` None/empty disables admin."""

    def __init__(
        self,
        control: ServiceControl,
        *,
        admin_token: str | None,
        metrics: Metrics | None = None,
        model_dir: str | None = None,
    ) -> None:
        self._control = control
        self._token = admin_token.encode() if admin_token else None
        self._model_dir = model_dir
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    def _build_app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/health", self._health)
        r.add_get("/ready", self._ready)
        r.add_get("/status", self._status)
        if self._token is not None:
            r.add_post("/admin/warmup", self._admin(self._warmup))
            r.add_post("/admin/reload", self._admin(self._reload))
            r.add_get("/admin/stats", self._admin(self._stats))
        if self._metrics is not None:
            r.add_get("/metrics", self._metrics.handle_metrics)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: ephemeral); returns the bound port."""
        if self._runner is not None:
            raise RuntimeError("HTTP server already running")
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = next(int(a[1]) for a in runner.addresses if isinstance(a, tuple))
        log.info("HTTP on http://%s:%d (admin %s)", host, bound, "on" if self._token else "off")
        return bound

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- public routes ------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        live = self._control.is_live()
        return _json({"status": "ok" if live else "dead"}, 200 if live else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        ready, reasons = self._control.readiness()
        if self._metrics is not None:
            self._metrics.set_ready(ready)
        return _json({"ready": ready, **reasons}, 200 if ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self._control.status())

    # -- admin --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest runs even for a wrong scheme so timing says nothing about the token.
        ok = hmac.compare_digest(given.strip().encode(), self._token)
        return ok and scheme.lower() == "bearer"

    def _admin(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return web.Response(
                    text=json.dumps({"error": "unauthorized"}),
                    status=401,
                    content_type="application/json",
                    headers={"WWW-Authenticate": 'Bearer realm="explainstream"'},
                )
            try:
                return await handler(request)
            except ExplainstreamError as exc:
                log.warning("admin %s failed: %s", request.path, exc)
                status = 400 if isinstance(exc, ConfigError | ValidationError) else 500
                return _json({"error": str(exc), "type": type(exc).__name__}, status)

        return guarded

    async def _warmup(self, request: web.Request) -> web.Response:
        return _json(await self._control.warmup())

    async def _reload(self, request: web.Request) -> web.Response:
        model_path: str | None = None
        if request.can_read_body:
            raw = await request.text()
            if raw.strip():
                try:
                    body: Any = json.loads(raw)
                except json.JSONDecodeError:
                    return _json({"error": "body must be JSON"}, 400)
                if not isinstance(body, dict):
                    return _json({"error": "body must be a JSON object"}, 400)
                model_path = body.get("model_path")
                if model_path is not None and not isinstance(model_path, str):
                    return _json({"error": "model_path must be a string"}, 400)
        if model_path is not None:
            try:
                model_path = str(model_file_under(self._model_dir, model_path))
            except ReloadRefused as exc:
                log.warning("admin reload refused: %s", exc.message)
                return _json({"error": exc.message}, exc.status)
        return _json(await self._control.reload(model_path))

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self._control.admin_stats())
