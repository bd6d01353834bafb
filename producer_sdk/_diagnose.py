"""Why a Kafka bootstrap failed, in words an operator can act on.

aiokafka reports every failed bootstrap as "Unable to bootstrap from [...]" and logs the
cause (a certificate not trusted, a wrong SASL password, TLS expected) at a level the CLI
silences. :func:`diagnose` repeats one connection attempt to the first bootstrap server
with aiokafka's own connection code and returns the cause as a short sentence naming the
setting to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError

from producer_sdk.connection import KafkaConnection
from schemas.errors import KafkaUnavailable

__all__ = ["DiagnosedUnavailable", "diagnose", "diagnosed", "with_diagnosis"]

_EXPECTS_TLS = (
    "{host}:{port} expects TLS: set KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL), "
    "KAFKA_SSL_CAFILE and, for SASL, KAFKA_SASL_*"
)


class DiagnosedUnavailable(KafkaUnavailable):
    """KafkaUnavailable whose message already carries :func:`diagnose`'s finding."""


def _first_server(conn: KafkaConnection) -> tuple[str, int]:
    first = conn.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), int(port or 9092)


async def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def diagnose(conn: KafkaConnection, timeout_s: float = 10.0) -> str | None:
    """The reason the first bootstrap server refuses ``conn``, or None if it accepts it."""
    try:
        host, port = _first_server(conn)
    except ValueError:
        return f"KAFKA_BOOTSTRAP_SERVERS: cannot parse {conn.bootstrap_servers!r}"
    kwargs = conn.aiokafka_kwargs()
    try:
        connection = await asyncio.wait_for(
            create_conn(
                host,
                port,
                ssl_context=kwargs.get("ssl_context"),
                security_protocol=conn.security_protocol,
                sasl_mechanism=conn.sasl_mechanism or "PLAIN",
                sasl_plain_username=conn.sasl_username,
                sasl_plain_password=conn.sasl_password,
                request_timeout_ms=int(timeout_s * 1000),
            ),
            timeout_s,
        )
    except ssl.SSLCertVerificationError as exc:
        return (
            f"TLS certificate of {host}:{port} is not trusted ({exc.verify_message}): "
            "check KAFKA_SSL_CAFILE"
        )
    except ssl.SSLError as exc:
        return f"TLS handshake with {host}:{port} failed ({exc.reason or exc}): is it a TLS port?"
    except KafkaError as exc:
        if "SSL" not in conn.security_protocol and await _speaks_tls(host, port, timeout_s):
            return _EXPECTS_TLS.format(host=host, port=port)
        if conn.security_protocol.startswith("SASL"):
            return (
                f"SASL {conn.sasl_mechanism} authentication as {conn.sasl_username!r} failed "
                f"({exc}): check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD"
            )
        return f"{host}:{port} refused the connection: {exc}"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g}s"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    connection.close()
    if "SSL" not in conn.security_protocol and await _speaks_tls(host, port, timeout_s):
        return _EXPECTS_TLS.format(host=host, port=port)
    return None


async def with_diagnosis(conn: KafkaConnection, message: str) -> str:
    """``message`` followed by the diagnosed cause, when one is found."""
    try:
        cause = await diagnose(conn)
    except Exception:  # the diagnosis must never hide the original error
        return message
    return f"{message} ({cause})" if cause else message


async def diagnosed(conn: KafkaConnection, error: KafkaUnavailable) -> KafkaUnavailable:
    """``error`` with the cause appended (once: a diagnosed error is returned as it is)."""
    if isinstance(error, DiagnosedUnavailable):
        return error
    return DiagnosedUnavailable(await with_diagnosis(conn, str(error)))
