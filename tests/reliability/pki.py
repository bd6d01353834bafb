"""A throw-away CA and broker certificate made with the ``openssl`` command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY_PASSWORD = "keystore-pass"

_EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


@dataclass(frozen=True)
class Pki:
    """Paths of the material a SASL_SSL broker and its clients need."""

    ca: Path  # the CA clients must trust
    other_ca: Path  # a CA that did not sign the broker (the "wrong CA" case)
    keystore: Path  # encrypted PKCS#8 key + the broker's certificate chain
    key_password: str = KEY_PASSWORD


def _ssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(name: str, cwd: Path) -> None:
    _ssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """Two CAs, and a broker certificate for 127.0.0.1/localhost signed by the first."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("other-ca", directory)
    (directory / "server.ext").write_text(_EXT)
    _ssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _ssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    # Kafka's PEM keystore wants an encrypted PKCS#8 key (with ssl.key.password), and
    # Java 17 decrypts PBES1 schemes only (PBES2 is "SecretKeyFactory not available").
    _ssl(
        "pkcs8", "-topk8", "-in", "server.key", "-out", "server.p8",
        "-v1", "PBE-SHA1-3DES", "-passout", f"pass:{KEY_PASSWORD}",
        cwd=directory,
    )  # fmt: skip
    keystore = directory / "server-keystore.pem"
    keystore.write_text(
        (directory / "server.p8").read_text()
        + (directory / "server.crt").read_text()
        + (directory / "ca.pem").read_text()
    )
    return Pki(directory / "ca.pem", directory / "other-ca.pem", keystore)
