"""Service configuration: one frozen object read from the environment at start.

Names are the old HTTP service's environment variables (see DESIGN.md). A bad value fails
:func:`Settings.from_env` with :class:`~schemas.errors.ConfigError` whose message starts with
the variable's name, so the process exits with one clear line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from enum import StrEnum
from typing import Any

import pydantic
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from producer_sdk.connection import KafkaConnection
from schemas.errors import ConfigError

__all__ = ["TIERS", "UNQUANTIZED_KV", "Delivery", "EngineKind", "GroundingPolicy", "Settings"]

TIERS: tuple[str, ...] = ("urgent", "high", "normal", "low")
#: KV cache types that need no flash attention (a quantized V cache does).
UNQUANTIZED_KV: tuple[str, ...] = ("f16", "f32")


class Delivery(StrEnum):
    """Commit policy: offsets after publish, or results+offsets in one transaction."""

    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class EngineKind(StrEnum):
    """Which inference engine runs requests."""

    LLAMA = "llama"
    SEQUENTIAL = "sequential"
    FAKE = "fake"


class GroundingPolicy(StrEnum):
    """What happens to an explanation the grounding checker refuses."""

    REPAIR = "repair"  # regenerate once, constrained; then the template
    FLAG = "flag"  # publish as generated, with the verdict
    OFF = "off"  # do not check


#: The environment ``from_env`` reads; None: ``os.environ``.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("explainstream_environ", default=None)


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' env source over the mapping given to ``from_env``.

    Names are case-insensitive, values are stripped, and an empty value means unset (the
    field's default), as ``VAR=`` does for the service's optional settings.
    """

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        source = os.environ if env is None else env
        return {key.lower(): value.strip() for key, value in source.items() if value.strip()}


class Settings(BaseSettings):
    """Every knob of the consumer service. Field name = lower-case env variable.

    Read by pydantic-settings from the environment (or the mapping given to
    :meth:`from_env`); explicit keyword arguments win over the environment.
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", case_sensitive=False, use_attribute_docstrings=True
    )

    # Each field's docstring is its description in the configuration reference
    # (docs/manual/configuration.md) and in the chart's values.schema.json.

    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Brokers, comma-separated."""
    kafka_topic_prefix: str = Field("explain", pattern=r"^[A-Za-z0-9._-]+$")
    """Topics are `<prefix>.requests.<tier>`, `<prefix>.results`, `<prefix>.dlq`."""
    kafka_group_id: str = "explainstream"
    """Consumer group (KEDA watches it)."""
    kafka_group_instance_id: str | None = None
    """Static membership (optional)."""
    kafka_security_protocol: str = Field(
        "PLAINTEXT", pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    kafka_sasl_mechanism: str | None = Field(
        None, pattern=r"^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512|OAUTHBEARER)$"
    )
    """SASL mechanism: PLAIN, SCRAM-SHA-256/512 (required with SASL_*)."""
    kafka_sasl_username: str | None = None
    """SASL user (PLAIN, SCRAM)."""
    kafka_sasl_password: str | None = None
    """SASL password (PLAIN, SCRAM)."""
    kafka_ssl_cafile: str | None = None
    """CA bundle for SSL."""
    kafka_partitions: int = Field(3, ge=1)
    """Partitions per topic, used by `topics create`."""
    kafka_replication_factor: int = Field(1, ge=1)
    """Replication factor, used by `topics create`."""
    kafka_max_poll_interval_ms: int = Field(300_000, ge=1000)
    """Poll liveness: the longest gap between polls before the group evicts the member."""
    kafka_session_timeout_ms: int = Field(45_000, ge=1000)
    """How soon a dead consumer's partitions move (heartbeats run every min(3 s,
    timeout/3)); also how long an assigned partition waits for its committed offset to be
    readable before it is held (`/health` fails after twice that)."""
    # A paused tier resumes only when the fetch in flight returns.
    kafka_fetch_max_wait_ms: int = Field(100, ge=1, le=10_000)
    """Longest a fetch waits on the broker; bounds the refill stall after a full tier
    buffer drains."""
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    """`at-least-once` (commit after publish) or `exactly-once` (results and offsets in one
    transaction); see Guarantees."""

    # Engine and model
    engine: EngineKind = EngineKind.LLAMA
    """`llama`, `sequential` or `fake`."""
    model_path: str | None = None
    """Any GGUF file; unset: the bundled SmolLM2-135M-Instruct Q4_1."""
    n_ctx: int = Field(0, ge=0)
    """Context size in tokens; 0 = slots x SEQ_BUDGET_TOKENS."""
    n_gpu_layers: int = Field(0, ge=-1)
    """Layers offloaded to the GPU (-1 = all)."""
    n_batch: int = Field(512, ge=8)
    """Tokens per llama_decode."""
    n_threads: int = Field(0, ge=0)
    """0 = the usable cores (affinity mask, cgroup CPU quota), for single-token steps and
    batches alike."""
    kv_cache_type: str = Field("f16", pattern=r"^(f32|f16|q8_0|q4_0|q4_1|q5_0|q5_1)$")
    """KV cache type: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1."""
    seq_budget_tokens: int = Field(1024, ge=64)
    """KV budget per sequence (prompt + output)."""
    # auto: llama.cpp's CPU flash-attention path measured 31 % slower with an f16/f32 cache.
    flash_attn: str = Field("auto", pattern=r"^(auto|on|off)$")
    """`auto`: off on a CPU-only model (`N_GPU_LAYERS=0`) with an f16/f32 KV cache,
    llama.cpp's own choice otherwise; `on`, `off` (off needs KV_CACHE_TYPE f16/f32)."""
    # A request arriving mid-step, an urgent one above all, waits for the step to end.
    max_step_ms: float = Field(250.0, ge=0)
    """While an urgent request arrived in the last 60 s, prompt chunks are cut so one decode
    step takes about this long (0 = only N_BATCH cuts); see Preemption."""
    # Each OK explanation is checked against its context (see consumer/runtime/grounded.py).
    grounding: GroundingPolicy = GroundingPolicy.REPAIR
    """`repair`: check every OK answer, regenerate a failing one once, else publish the
    template; `flag`: check and label only; `off`: no checks, no grammar (see Grounding)."""
    warmup_on_start: bool = True
    """One tiny generation per prompt profile before joining the group."""
    fake_latency_ms: float = Field(0.0, ge=0)
    """Fake engine only: latency per request."""
    fake_failure_rate: float = Field(0.0, ge=0, le=1)
    """Fake engine only: share of calls that fail."""
    fake_tokens_per_s: float = Field(0.0, ge=0)
    """Fake engine only: generation speed (0 = instant)."""

    # Scheduling and reliability
    max_concurrent_requests: int = Field(8, ge=1, le=256)
    """Engine slots (sequences in the batch)."""
    max_queue_size: int = Field(256, ge=4)
    """Buffered requests in total (split over the tiers)."""
    request_timeout: float = Field(60.0, gt=0)
    """Seconds per inference attempt."""
    max_tokens_limit: int = Field(1024, ge=1)
    """A larger `max_tokens` is REJECTED."""
    aging_s: float = Field(30.0, gt=0)
    """Promotion step against starvation: one tier up per AGING_S seconds waited."""
    retry_attempts: int = Field(3, ge=1)
    """Engine attempts per request before FAILED."""
    retry_backoff_ms: float = Field(200.0, ge=0)
    """First retry's backoff (exponential)."""
    breaker_window: int = Field(20, ge=1)
    """Circuit breaker: engine calls it looks back over."""
    breaker_failure_rate: float = Field(0.5, gt=0, le=1)
    """Circuit breaker: failure rate that opens it."""
    breaker_min_calls: int = Field(5, ge=1)
    """Circuit breaker: calls in the window before it may open."""
    breaker_open_s: float = Field(30.0, gt=0)
    """Circuit breaker: seconds open before probes go through (half-open)."""
    breaker_probes: int = Field(2, ge=1)
    """Circuit breaker: requests let through half-open."""
    breaker_half_open_timeout_s: float = Field(60.0, gt=0)
    """Half-open without a verdict for this long opens again (a probe never answered frees
    its token)."""
    breaker_max_open_s: float = Field(300.0, ge=0)
    """Seconds the breaker may stay open or half-open without closing again; past it the
    consumer fails liveness, leaves the group (its partitions move to a healthy member) and
    exits with status 3. 0 = stay (a pool whose engine is remote and shared)."""
    drain_timeout_s: float = Field(30.0, gt=0)
    """SIGTERM / revoke drain bound."""
    commit_interval_ms: int = Field(500, ge=10)
    """Offset commit (or transaction) cadence."""
    publish_timeout_s: float = Field(30.0, gt=0)
    """A result not written by then is answered FAILED on the default results topic (DLQ if
    that fails too)."""
    reply_to_allowed: str | None = None
    """Comma list of topics `reply_to` may name (`name*` = prefix); unset: `<prefix>.results`
    and any other `<prefix>.*` topic; the request topics and the DLQ are never allowed;
    others are REJECTED."""
    max_uncommitted_per_partition: int = Field(1000, ge=1)
    """Records a partition may have taken but not committed (buffered, running, publishing,
    or done behind a slower one) before it is paused."""
    max_context_bytes: int = Field(16_384, ge=256)
    """Larger contexts (compact JSON of the encoded fields) are REJECTED."""

    # Rate limits and fair share between sources (docs/manual/rate-limits.md)
    gateway_rate_limit: float | None = Field(
        None,
        gt=0,
        description="Gateway: requests/s per client (API key or peer address); unset: no limit. "
        "Over it the gateway answers 429 with Retry-After.",
    )
    gateway_rate_burst: int | None = Field(
        None, ge=1, description="Gateway: bucket size per client; unset: max(32, the rate)."
    )
    gateway_api_key_header: str | None = Field(
        None,
        description="Gateway: header naming the client for the rate limit (e.g. X-API-Key); "
        "requests without it are charged to their peer address.",
    )
    fair_share: bool = Field(
        True,
        description="Within a tier, pick across request sources by weighted fair share "
        "(false: arrival order).",
    )
    source_weights: str | None = Field(
        None,
        pattern=r"^\s*([^=,\s]+\s*=\s*[0-9]*\.?[0-9]+\s*(,\s*|$))*$",
        description="Fair-share weights as source=weight pairs, comma-separated "
        "(e.g. 'pricing=3,replay=0.5'); unlisted sources weigh 1.",
    )
    source_max_slot_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Most of the engine's slots one source may hold (at least one slot).",
    )
    source_max_buffer_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Most of a tier's buffer one source may hold (1: no cap); over it "
        "see SOURCE_OVER_SHARE.",
    )
    source_over_share: str = Field(
        "pause",
        pattern=r"^(pause|reject)$",
        description="A source over SOURCE_MAX_BUFFER_SHARE: pause the partitions it came from "
        "(holds only it back when producers partition by source) or reject: answer its "
        "requests REJECTED with a retry hint (reaches requests behind a flood in shared "
        "partitions).",
    )

    # Prompt profiles, accounting, schema registry
    prompt_profiles_path: str | None = None
    """YAML file of operator prompt profiles (see Prompt profiles)."""
    cost_per_gpu_hour: float | None = Field(None, ge=0)
    """Price of an hour of compute; `/status` then reports the cost per request."""
    model_dir: str | None = None
    """`/admin/reload` accepts only `.gguf` files inside this directory (symlinks and `..`
    resolved first); unset: reload takes no `model_path`."""
    schema_registry_url: str | None = None
    """Schema registry base URL, e.g. `http://schema-registry:8081`; unset: the embedded
    registry."""
    schema_registry_username: str | None = None
    """Schema registry HTTP basic auth user."""
    schema_registry_password: str | None = None
    """Schema registry HTTP basic auth password."""
    schema_registry_token: str | None = None
    """Schema registry bearer token (instead of basic auth)."""
    schema_registry_cafile: str | None = None
    """CA bundle for an https schema registry."""

    # HTTP and metrics
    http_port: int = Field(8000, ge=0, le=65535)
    """Health, status, admin (0 = ephemeral, logged)."""
    http_host: str = "0.0.0.0"
    """Address the HTTP server binds."""
    prometheus_enabled: bool = True
    """Serve `/metrics` on METRICS_PORT."""
    metrics_port: int = Field(9090, ge=0, le=65535)
    """Port of `/metrics` (0 = ephemeral, logged)."""
    admin_token: str | None = None
    """Enables `/admin/*` (Bearer)."""
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    """Logging level."""
    debug: bool = False
    """Debug logging."""
    consumer_id: str | None = None
    """Written into every result; unset: host-pid."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) plus explicit overrides.

        Raises ConfigError naming the first bad variable.
        """
        token = _ENVIRON.set(os.environ if environ is None else environ)
        try:
            settings = cls(**overrides)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]).upper() if err["loc"] else "CONFIG"
            raise ConfigError(key, f"{err['msg']} (got {err.get('input')!r})") from exc
        finally:
            _ENVIRON.reset(token)
        settings._check()
        return settings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides first, then the environment; no dotenv or secret files."""
        return init_settings, _EnvSource(settings_cls)

    def _check(self) -> None:
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ConfigError("KAFKA_SASL_MECHANISM", "required when using SASL")
        if self.kafka_sasl_mechanism in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ConfigError("KAFKA_SASL_USERNAME", "username and password required for SASL")
        if self.kafka_ssl_cafile and not os.path.isfile(self.kafka_ssl_cafile):
            raise ConfigError("KAFKA_SSL_CAFILE", f"no such file {self.kafka_ssl_cafile!r}")
        if self.flash_attn == "off" and self.kv_cache_type not in UNQUANTIZED_KV:
            raise ConfigError(
                "FLASH_ATTN", f"off needs KV_CACHE_TYPE f16 or f32 (got {self.kv_cache_type})"
            )
        if self.breaker_min_calls > self.breaker_window:
            raise ConfigError(
                "BREAKER_MIN_CALLS",
                f"must be at most BREAKER_WINDOW (got {self.breaker_min_calls} > "
                f"{self.breaker_window}): the breaker could never open",
            )
        if self.max_queue_size < self.max_concurrent_requests:
            raise ConfigError("MAX_QUEUE_SIZE", "must be at least MAX_CONCURRENT_REQUESTS")
        if self.model_path is not None and not os.path.isfile(self.model_path):
            raise ConfigError("MODEL_PATH", f"no such file {self.model_path!r}")
        from schemas.registry import build_codec

        # Builds nothing that connects: only checks URL, credentials and CA file.
        build_codec(
            self.schema_registry_url,
            username=self.schema_registry_username,
            password=self.schema_registry_password,
            token=self.schema_registry_token,
            cafile=self.schema_registry_cafile,
        )

    def rebalance_timeout_ms(self) -> int:
        """How long the group coordinator waits for this member to rejoin: the revoke drain
        (DRAIN_TIMEOUT_S) plus room for its final commit, never below the session timeout.
        aiokafka's own default (the session timeout) evicted a member whose drain ran long
        mid-callback: its commit failed and a graceful rebalance answered twice."""
        return max(self.kafka_session_timeout_ms, int(self.drain_timeout_s * 1000) + 15_000)

    def kafka_connection(self, client_id: str = "explainstream") -> KafkaConnection:
        """Connection settings (bootstrap, SASL/TLS) for any Kafka client of the service."""
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            client_id=client_id,
        )

    def topic(self, suffix: str) -> str:
        """Full topic name for ``requests.<tier>``, ``results`` or ``dlq``."""
        return f"{self.kafka_topic_prefix}.{suffix}"

    def request_topics(self) -> dict[str, str]:
        """Tier name -> request topic."""
        return {tier: self.topic(f"requests.{tier}") for tier in TIERS}

    @property
    def results_topic(self) -> str:
        """Default results topic."""
        return self.topic("results")

    @property
    def dlq_topic(self) -> str:
        """Dead-letter topic."""
        return self.topic("dlq")
