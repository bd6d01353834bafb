"""Client for the Confluent Schema Registry REST API (also Apicurio ccompat, Karapace, Redpanda).

Synchronous on purpose: the codec is synchronous and a schema is fetched once per id, then
cached for the life of the process.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from schemas.errors import RegistryError

__all__ = ["ConfluentSchemaRegistry"]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_MAX_RESPONSE_BYTES = 1024 * 1024


class ConfluentSchemaRegistry:
    """Register and look up schemas on a Confluent-compatible registry.

    Subjects are ``<subject><subject_suffix>`` (``ExplanationRequest-value`` by default).
    Ids are cached forever (a registry never changes what an id means); unknown ids are
    remembered for ``negative_ttl_s`` so that a flood of garbage ids costs one call each
    at most once per interval.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        subject_suffix: str = "-value",
        negative_ttl_s: float = 60.0,
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryError(f"schema registry url {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.subject_suffix = subject_suffix
        self.negative_ttl_s = negative_ttl_s
        self._ssl = ssl_context
        self._headers = {"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE}
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._missing: dict[int, float] = {}

    def id_for(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent on the registry) and return its id."""
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
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
                with self._lock:
                    self._missing[schema_id] = time.monotonic() + self.negative_ttl_s
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
            # 4xx: the registry answered and said no; 5xx: it may answer later.
            raise RegistryError(
                f"schema registry {method} {path}: HTTP {exc.code} {detail}",
                retriable=exc.code >= 500,
            ) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise RegistryError(
                f"schema registry at {self.url} unreachable: {exc}", retriable=True
            ) from exc
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise RegistryError(f"schema registry answer to {path} exceeds 1 MiB")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"schema registry answer to {path} is not JSON") from exc
        if not isinstance(answer, dict):
            raise RegistryError(f"schema registry answer to {path} is not an object")
        return answer


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(64 * 1024))
        return f"(error_code {body.get('error_code')}: {body.get('message')})"
    except Exception:
        return ""
