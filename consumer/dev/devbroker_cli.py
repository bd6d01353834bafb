"""``explainstream dev-broker start|stop|status``: the command over :class:`DevBroker`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from consumer.dev.brokersec import BrokerSecurity
from consumer.dev.devbroker import DevBroker, default_data_dir
from consumer.dev.kafkajars import DevBrokerError

__all__ = ["register"]


def _security(args: argparse.Namespace) -> BrokerSecurity | None:
    if args.security_protocol == "PLAINTEXT":
        return None
    missing = [
        flag
        for flag, value in (
            ("--ssl-keystore", args.ssl_keystore),
            ("--ssl-key-password", args.ssl_key_password),
            ("--ssl-ca", args.ssl_ca),
            ("--scram-user", args.scram_user),
        )
        if not value
    ]
    if missing:
        raise DevBrokerError(f"--security-protocol SASL_SSL needs {', '.join(missing)}")
    return BrokerSecurity(
        keystore_pem=Path(args.ssl_keystore),
        key_password=args.ssl_key_password,
        truststore_pem=Path(args.ssl_ca),
        users=BrokerSecurity.parse_users(args.scram_user),
    )


def _cmd(args: argparse.Namespace) -> int:
    try:
        broker = DevBroker(
            Path(args.data_dir), port=args.port, brokers=args.brokers, security=_security(args)
        )
        if args.action == "start":
            was_up = broker.is_up()
            address = broker.start()
            note = "already running" if was_up else "started"
            print(f"{note}: {address}", file=sys.stderr)
            print(address)
        elif args.action == "stop":
            count = broker.stop()
            print(f"stopped {count} node(s)" if count else "not running", file=sys.stderr)
        else:
            if broker.is_up():
                print(broker.bootstrap)
            else:
                print("down")
                return 3
    except DevBrokerError as exc:
        print(f"explainstream dev-broker: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dev-broker start|stop|status`` to the CLI."""
    p = subparsers.add_parser("dev-broker", help="run a real local Apache Kafka (KRaft)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--brokers", type=int, default=1, choices=[1, 3])
    p.add_argument("--port", type=int, default=9092, help="first broker port")
    p.add_argument("--data-dir", default=str(default_data_dir()))
    sec = p.add_argument_group("SASL_SSL (SCRAM-SHA-512) on the client listener")
    sec.add_argument("--security-protocol", choices=["PLAINTEXT", "SASL_SSL"], default="PLAINTEXT")
    sec.add_argument("--ssl-keystore", help="PEM: encrypted PKCS#8 key + certificate chain")
    sec.add_argument("--ssl-key-password", help="password of the keystore's private key")
    sec.add_argument("--ssl-ca", help="PEM CA certificate(s) the brokers trust")
    sec.add_argument(
        "--scram-user",
        action="append",
        metavar="NAME:PASSWORD",
        help="SCRAM-SHA-512 user created at format (repeat; the first is inter-broker)",
    )
    p.set_defaults(func=_cmd)
