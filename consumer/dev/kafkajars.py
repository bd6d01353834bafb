"""The Apache Kafka broker jars for the dev broker: Java 17+ and a Maven-resolved classpath.

The broker jars come from Maven Central (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies plus a log4j2 backend), resolved with Maven once and cached under
``~/.cache/explainstream/kafka/<version>``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from schemas.errors import ExplainstreamError

__all__ = ["KAFKA_VERSION", "DevBrokerError", "default_cache_dir", "fetch_jars", "find_java"]

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"


class DevBrokerError(ExplainstreamError):
    """The local broker could not be prepared, started or stopped."""


def default_cache_dir() -> Path:
    """Where the Kafka jars are cached (outside the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "explainstream" / "kafka" / KAFKA_VERSION


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.explainstream</groupId>
  <artifactId>dev-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise DevBrokerError(f"could not read the Java version from {java!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """Path of a Java 17+ executable, or DevBrokerError saying what to install."""
    home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(home) / "bin" / "java")] if home else []
    found = shutil.which("java")
    if found:
        candidates.append(found)
    for java in candidates:
        if os.access(java, os.X_OK) and _java_major(java) >= 17:
            return java
    raise DevBrokerError(
        "Java 17 or newer is required for the local Kafka broker but was not found on PATH "
        "or in JAVA_HOME (install OpenJDK 17, e.g. `apt-get install openjdk-17-jre-headless`)"
    )


def fetch_jars(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Resolve the Kafka broker classpath with Maven into ``cache_dir/lib`` (cached)."""
    cache = cache_dir or default_cache_dir()
    lib = cache / "lib"
    marker = cache / ".complete"
    if marker.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevBrokerError(
            "Maven (`mvn`) is required once to fetch the Kafka jars from Maven Central "
            "but was not found on PATH (install it, e.g. `apt-get install maven`)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "pom.xml").write_text(
        _POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION)
    )
    tmp_lib = cache / "lib.partial"
    shutil.rmtree(tmp_lib, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(cache / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp_lib}",
    ]
    if not quiet:
        print(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven ...", file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    count = 0
    # A terminal gets one rewritten line; a log (CI) gets a line every 50 files.
    tty = sys.stderr.isatty()
    for line in proc.stdout:
        tail = [*tail[-30:], line.rstrip()]
        if "Downloaded from" in line:
            count += 1
            if not quiet and tty:
                found = re.search(r"([^/\s]+\.(?:jar|pom))", line)
                name = found.group(1) if found else ""
                print(f"\r  downloaded {count} files {name[:60]:<60}", end="", file=sys.stderr)
            elif not quiet and count % 50 == 0:
                print(f"  downloaded {count} files", file=sys.stderr)
    if proc.wait() != 0:
        raise DevBrokerError("Maven could not fetch the Kafka jars:\n" + "\n".join(tail))
    if not quiet and count and tty:
        print(file=sys.stderr)
    if not quiet:
        print(f"  {count} files downloaded into {lib}", file=sys.stderr)
    shutil.rmtree(lib, ignore_errors=True)
    tmp_lib.rename(lib)
    marker.write_text(KAFKA_VERSION)
    return lib
