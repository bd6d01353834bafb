"""SASL_SSL with SCRAM-SHA-512 for the dev broker.

The certificates are the caller's (tests make a CA and a server certificate): a PEM keystore
(the server's PKCS#8 private key, encrypted as Kafka's PEM support requires, followed by its
certificate chain) and a PEM truststore (the CA). SCRAM users are written into the KRaft
metadata when storage is formatted (``StorageTool format --add-scram``), so they exist before
the broker first answers; the first user is the one brokers use among themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ConfigError

__all__ = ["MECHANISM", "BrokerSecurity"]

MECHANISM = "SCRAM-SHA-512"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class BrokerSecurity:
    """The client listener speaks SASL_SSL; clients authenticate with SCRAM-SHA-512."""

    keystore_pem: Path  # encrypted PKCS#8 key + certificate chain
    key_password: str
    truststore_pem: Path  # CA certificate(s)
    users: tuple[tuple[str, str], ...]  # (name, password); users[0] is the inter-broker user

    def __post_init__(self) -> None:
        if not self.users:
            raise ConfigError("--scram-user", "at least one SCRAM user is required")
        for name, password in self.users:
            # Both end up inside Kafka's bracketed --add-scram syntax and a JAAS line.
            if not (_SAFE.match(name) and _SAFE.match(password)):
                raise ConfigError("--scram-user", f"use [A-Za-z0-9_.-] only (user {name!r})")
        for label, path in (
            ("--ssl-keystore", self.keystore_pem),
            ("--ssl-ca", self.truststore_pem),
        ):
            if not Path(path).is_file():
                raise ConfigError(label, f"no such file {str(path)!r}")

    @classmethod
    def parse_users(cls, specs: list[str]) -> tuple[tuple[str, str], ...]:
        """``["alice:secret", ...]`` -> ((name, password), ...)."""
        out = []
        for spec in specs:
            name, sep, password = spec.partition(":")
            if not sep:
                raise ConfigError("--scram-user", f"expected NAME:PASSWORD, got {spec!r}")
            out.append((name, password))
        return tuple(out)

    def listener_properties(self) -> dict[str, str]:
        """server.properties entries for a listener named SASL_SSL (the inter-broker one)."""
        admin, password = self.users[0]
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{admin}" password="{password}";'
        )
        return {
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore_pem),
            "ssl.key.password": self.key_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.truststore_pem),
            "ssl.client.auth": "none",
        }

    def format_args(self) -> list[str]:
        """Extra ``StorageTool format`` arguments creating the SCRAM users."""
        args = []
        for name, password in self.users:
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args
