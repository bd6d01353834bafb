"""dev-broker SASL_SSL settings: validated up front, rendered into Kafka's own syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.dev.brokersec import BrokerSecurity
from schemas.errors import ConfigError


@pytest.fixture
def pems(tmp_path: Path) -> tuple[Path, Path]:
    keystore, ca = tmp_path / "server.pem", tmp_path / "ca.pem"
    keystore.write_text("key+chain")
    ca.write_text("ca")
    return keystore, ca


def test_users_become_scram_format_arguments_and_the_first_is_inter_broker(pems) -> None:
    sec = BrokerSecurity(*pems[:1], "pw", pems[1], BrokerSecurity.parse_users(["b:s1", "app:s2"]))
    assert sec.format_args() == [
        "--add-scram",
        "SCRAM-SHA-512=[name=b,password=s1]",
        "--add-scram",
        "SCRAM-SHA-512=[name=app,password=s2]",
    ]
    props = sec.listener_properties()
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert (
        'username="b" password="s1"'
        in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    )
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"


@pytest.mark.parametrize(
    "users", [[], ["no-colon"], ['x:"];inject'], ["a b:pw"]], ids=["none", "form", "quote", "space"]
)
def test_bad_users_fail_naming_the_flag(pems, users: list[str]) -> None:
    with pytest.raises(ConfigError, match="--scram-user"):
        BrokerSecurity(pems[0], "pw", pems[1], BrokerSecurity.parse_users(users))


def test_missing_files_fail_naming_the_flag(tmp_path: Path, pems) -> None:
    with pytest.raises(ConfigError, match="--ssl-ca"):
        BrokerSecurity(pems[0], "pw", tmp_path / "nope.pem", (("b", "s"),))
