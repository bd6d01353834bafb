"""Client for the Confluent Schema Registry REST API (also Apicurio ccompat, Karapace, Redpanda).

The client is async for the service's paths (:meth:`ConfluentSchemaRegistry.fetch_schema`,
:meth:`ConfluentSchemaRegistry.register`): each HTTP call runs in a worker thread so the
event loop never blocks, and concurrent lookups of one id share a single call. The codec's
synchronous :meth:`~ConfluentSchemaRegistry.schema_for` / :meth:`~ConfluentSchemaRegistry.id_for`
answer from the same cache and fall back to a blocking call only for callers that never
awaited the async side (scripts, tests).

A registry that cannot be reached (connection refused, timeout, HTTP 5xx or 429) raises a
*retriable* :class:`~schemas.errors.RegistryError`; an answer that says no (unknown id,
malformed schema) raises a non-retriable one. :func:`build_codec` is the one place every
component turns ``SCHEMA_REGISTRY_*`` settings into a :class:`~schemas.codec.Codec`.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from schemas.codec import Codec, Limits
from schemas.errors import ConfigError, DecodeError, RegistryError

__all__ = [
    "ConfluentSchemaRegistry",
    "build_codec",
    "codec_from_env",
    "codec_from_settings",
    "resolve_waiting",
]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_MAX_RESPONSE_BYTES = 1024 * 1024
_MAX_MISSING = 1024  # ids remembered as unknown
_ENV = ("URL", "USERNAME", "PASSWORD", "TOKEN", "CAFILE")


class ConfluentSchemaRegistry:
    """Register and look up schemas on a Confluent-compatible registry.

    Subjects are ``<subject><subject_suffix>`` (``ExplanationRequest-value`` by default).
    Ids are cached forever (a registry never changes what an id means); unknown ids are
    remembered for ``negative_ttl_s`` so that a flood of garbage ids costs one call each
    at most once per interval. Authenticate with ``username``/``password`` (HTTP basic) or
    ``token`` (bearer); ``cafile`` verifies an https registry against a private CA.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        cafile: str | None = None,
        timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        subject_suffix: str = "-value",
        negative_ttl_s: float = 60.0,
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryError(f"schema registry url {url!r} is not an http(s) URL")
        if token is not None and username is not None:
            raise RegistryError("give the schema registry a username/password or a token, not both")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.subject_suffix = subject_suffix
        self.negative_ttl_s = negative_ttl_s
        if ssl_context is None and cafile is not None:
            ssl_context = ssl.create_default_context(cafile=cafile)
        self._ssl = ssl_context
        self._headers = {"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE}
        if username is not None:
            basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        elif token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._missing: dict[int, float] = {}
        # One call in flight per id / per (subject, schema); later callers await it.
        self._inflight: dict[object, asyncio.Future[Any]] = {}

    # -- async API (the service, the SDK) ---------------------------------------------------

    def cached_schema(self, schema_id: int) -> Mapping[str, Any] | None:
        """The schema of ``schema_id`` if it is already known, without any call."""
        with self._lock:
            return self._schemas.get(schema_id)

    async def fetch_schema(self, schema_id: int) -> Mapping[str, Any]:
        """Writer schema of ``schema_id`` from the cache or the registry (one call per id)."""
        cached = self.cached_schema(schema_id)
        if cached is not None:
            return cached
        schema: Mapping[str, Any] = await self._single_flight(
            ("id", schema_id), self.schema_for, schema_id
        )
        return schema

    async def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id, cached."""
        text = _canonical(schema)
        with self._lock:
            cached = self._ids.get((subject, text))
        if cached is not None:
            return cached
        schema_id: int = await self._single_flight(
            ("subject", subject, text), self.id_for, subject, schema
        )
        return schema_id

    async def _single_flight(self, key: object, call: Any, *args: Any) -> Any:
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(call, *args))
            self._inflight[key] = running
            running.add_done_callback(lambda _f: self._inflight.pop(key, None))
        # shield: one caller cancelled must not cancel the lookup others wait for.
        return await asyncio.shield(running)

    # -- synchronous API (the codec's fallback) ---------------------------------------------

    def id_for(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent on the registry) and return its id."""
        text = _canonical(schema)
        key = (subject, text)
        with self._lock:
            cached = self._ids.get(key)
        if cached is not None:
            return cached
        path = f"/subjects/{urllib.parse.quote(subject + self.subject_suffix, safe='')}/versions"
        answer = self._call("POST", path, {"schema": text, "schemaType": "AVRO"})
        schema_id = answer.get("id")
        if not isinstance(schema_id, int):
            raise RegistryError(f"registry answered {answer!r} without an integer id")
        with self._lock:
            self._ids[key] = schema_id
            self._schemas.setdefault(schema_id, json.loads(text))
        return schema_id

    def schema_for(self, schema_id: int) -> Mapping[str, Any]:
        """The schema registered under ``schema_id``; RegistryError when unknown."""
        with self._lock:
            cached = self._schemas.get(schema_id)
            missing_until = self._missing.get(schema_id, 0.0)
        if cached is not None:
            return cached
        if missing_until > time.monotonic():
            raise RegistryError(f"unknown schema id {schema_id}")
        try:
            answer = self._call("GET", f"/schemas/ids/{int(schema_id)}", None)
        except RegistryError as exc:
            if not exc.retriable:
                self._remember_missing(schema_id)
            raise
        text = answer.get("schema")
        if not isinstance(text, str):
            raise RegistryError(f"registry answer for id {schema_id} has no schema")
        if answer.get("schemaType", "AVRO") != "AVRO":
            raise RegistryError(f"schema id {schema_id} is {answer['schemaType']}, not AVRO")
        try:
            schema = json.loads(text)
        except ValueError as exc:
            raise RegistryError(f"schema id {schema_id} is not JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise RegistryError(f"schema id {schema_id} is not a record schema")
        with self._lock:
            self._schemas[schema_id] = schema
        return schema

    def _remember_missing(self, schema_id: int) -> None:
        """Cache an id the registry said it does not know, for ``negative_ttl_s``; the cache
        is bounded (random ids in hostile records must not grow it)."""
        now = time.monotonic()
        with self._lock:
            if len(self._missing) >= _MAX_MISSING:
                for key in [k for k, until in self._missing.items() if until <= now]:
                    del self._missing[key]
                while len(self._missing) >= _MAX_MISSING:
                    del self._missing[next(iter(self._missing))]  # the oldest entry
            self._missing[schema_id] = now + self.negative_ttl_s

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self._headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._ssl) as resp:
                raw = resp.read(_MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            # 4xx: the registry answered and said no; 5xx and 429: it may answer later.
            raise RegistryError(
                f"schema registry {method} {path}: HTTP {exc.code} {detail}",
                retriable=exc.code >= 500 or exc.code == 429,
            ) from exc
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            # HTTPException: a garbled status line, a truncated body, a dropped connection.
            raise RegistryError(
                f"schema registry at {self.url} unreachable: {exc!r}", retriable=True
            ) from exc
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise RegistryError(f"schema registry answer to {path} exceeds 1 MiB")
        # A 200 whose body is not a JSON object is a broken answer, not a "no" (that comes
        # as a 4xx): retriable, so valid records wait instead of going to the DLQ.
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(
                f"schema registry answer to {path} is not JSON", retriable=True
            ) from exc
        if not isinstance(answer, dict):
            raise RegistryError(
                f"schema registry answer to {path} is not an object", retriable=True
            )
        return answer


def _canonical(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(64 * 1024))
        return f"(error_code {body.get('error_code')}: {body.get('message')})"
    except Exception:
        return ""


def build_codec(
    url: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    cafile: str | None = None,
    limits: Limits | None = None,
) -> Codec:
    """The codec for ``SCHEMA_REGISTRY_*`` settings: a registry client when ``url`` is set,
    else the embedded registry (pinned ids 1 and 2).

    Raises ConfigError naming the variable when the settings cannot work.
    """
    if not url:
        for name, value in (("USERNAME", username), ("TOKEN", token), ("CAFILE", cafile)):
            if value:
                raise ConfigError(f"SCHEMA_REGISTRY_{name}", "set without SCHEMA_REGISTRY_URL")
        return Codec(limits=limits)
    if username and token:
        raise ConfigError(
            "SCHEMA_REGISTRY_TOKEN", "give either a token or SCHEMA_REGISTRY_USERNAME, not both"
        )
    if password and not username:
        raise ConfigError("SCHEMA_REGISTRY_USERNAME", "required with SCHEMA_REGISTRY_PASSWORD")
    if cafile and not os.path.isfile(cafile):
        raise ConfigError("SCHEMA_REGISTRY_CAFILE", f"no such file {cafile!r}")
    try:
        registry = ConfluentSchemaRegistry(
            url, username=username or None, password=password, token=token or None, cafile=cafile
        )
    except RegistryError as exc:
        raise ConfigError("SCHEMA_REGISTRY_URL", str(exc)) from None
    except ssl.SSLError as exc:
        raise ConfigError("SCHEMA_REGISTRY_CAFILE", f"not a CA bundle: {exc}") from None
    return Codec(registry, limits=limits)


def codec_from_settings(settings: Any) -> Codec:
    """:func:`build_codec` from any object with ``schema_registry_*`` attributes (Settings)."""
    return build_codec(
        settings.schema_registry_url,
        username=settings.schema_registry_username,
        password=settings.schema_registry_password,
        token=settings.schema_registry_token,
        cafile=settings.schema_registry_cafile,
    )


def codec_from_env(environ: Mapping[str, str] | None = None) -> Codec:
    """:func:`build_codec` from ``SCHEMA_REGISTRY_URL`` / ``_USERNAME`` / ``_PASSWORD`` /
    ``_TOKEN`` / ``_CAFILE`` (the SDK's and the client commands' configuration)."""
    env = os.environ if environ is None else environ
    values = {key.lower(): env.get(f"SCHEMA_REGISTRY_{key}", "").strip() or None for key in _ENV}
    return build_codec(
        values["url"],
        username=values["username"],
        password=values["password"],
        token=values["token"],
        cafile=values["cafile"],
    )


async def resolve_waiting(
    codec: Codec, payload: bytes | None, *, give_up_s: float = 60.0, first_backoff_s: float = 0.2
) -> None:
    """``codec.resolve(payload)``, retried with backoff while the registry is unreachable.

    For readers that cannot hand a record back (replay, reply routing): the record waits
    up to ``give_up_s``, then the retriable SchemaRegistryUnavailable is raised. Any other
    DecodeError is raised at once.
    """
    deadline = time.monotonic() + give_up_s
    backoff = first_backoff_s
    while True:
        try:
            await codec.resolve(payload)  # type: ignore[arg-type]
            return
        except DecodeError as exc:
            if not exc.retriable or time.monotonic() + backoff > deadline:
                raise
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
