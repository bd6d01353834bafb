"""A real local schema registry for tests and demos: Apicurio Registry from Maven Central.

Apicurio Registry is a Quarkus application; Maven Central carries its classes
(``io.apicurio:apicurio-registry-app``) but not a runnable build, so :func:`fetch_registry`
builds one, once, with Maven and the Quarkus Maven plugin, into the cache. Version
2.4.2.Final is the newest whose dependencies Central serves almost completely (3.x lacks
``apicurio-registry-schema-util-provider``, 2.5/2.6 their jitpack JSON-schema library);
what 2.4.2 still lacks is worked around in the build and said below:

* ``org.everit.json.schema`` (JSON Schema artifacts) is excluded: we register Avro only;
* the ``config-index`` Quarkus extension's deployment jar is missing, so the extension is
  excluded and the one bean it would generate (an empty list of dynamic properties) is
  produced by a five-line class of ours.

Storage is in memory (H2); the Confluent-compatible API is ``<url>/apis/ccompat/v7``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from consumer.dev.devbroker import find_java
from consumer.dev.ports import free_port
from schemas.errors import ExplainstreamError

__all__ = ["APICURIO_VERSION", "ApicurioRegistry", "RegistryLaunchError", "fetch_registry"]

APICURIO_VERSION = "2.4.2.Final"
QUARKUS_VERSION = "2.16.4.Final"  # the version apicurio-registry 2.4.2.Final is built with
CCOMPAT_PATH = "/apis/ccompat/v7"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.explainstream</groupId>
  <artifactId>apicurio-runner</artifactId>
  <version>1</version>
  <properties>
    <maven.compiler.source>17</maven.compiler.source>
    <maven.compiler.target>17</maven.compiler.target>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>io.apicurio</groupId><artifactId>apicurio-registry</artifactId>
        <version>{apicurio}</version><type>pom</type><scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>io.apicurio</groupId><artifactId>apicurio-registry-app</artifactId>
      <version>{apicurio}</version>
      <exclusions>
        <exclusion>
          <groupId>com.github.everit-org.json-schema</groupId>
          <artifactId>org.everit.json.schema</artifactId>
        </exclusion>
        <exclusion>
          <groupId>io.apicurio</groupId>
          <artifactId>apicurio-common-app-components-config-index</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>io.quarkus</groupId><artifactId>quarkus-maven-plugin</artifactId>
        <version>{quarkus}</version>
        <executions><execution><goals><goal>build</goal></goals></execution></executions>
      </plugin>
    </plugins>
  </build>
</project>
"""

# The registry's poms list other repositories; only Maven Central is reachable here.
_SETTINGS = """<settings><mirrors><mirror>
  <id>central-only</id><mirrorOf>*</mirrorOf><url>https://repo.maven.apache.org/maven2</url>
</mirror></mirrors></settings>
"""

_BEAN = """package local.explainstream;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/** Stands in for the config-index build extension, whose deployment jar is not on Central. */
public class NoDynamicConfig {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigProperties() {
        return new DynamicConfigPropertyList(List.of());
    }
}
"""

# The application's classes live in a dependency jar: index it for CDI.
_PROPERTIES = """quarkus.index-dependency.registry.group-id=io.apicurio
quarkus.index-dependency.registry.artifact-id=apicurio-registry-app
"""


class RegistryLaunchError(ExplainstreamError):
    """The registry could not be built or started; the message says why."""


def default_cache_dir() -> Path:
    """Where the built registry is cached (outside the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "explainstream" / "apicurio" / APICURIO_VERSION


def fetch_registry(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Build Apicurio Registry with Maven (once; cached) and return its runner jar."""
    cache = cache_dir or default_cache_dir()
    runner = cache / "app" / "apicurio-runner-1-runner.jar"
    if runner.is_file() and (cache / ".complete").exists():
        return runner
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RegistryLaunchError(
            "Maven (`mvn`) is required once to build Apicurio Registry from Maven Central "
            "(install it, e.g. `apt-get install maven`)"
        )
    project = cache / "build"
    shutil.rmtree(project, ignore_errors=True)
    java_dir = project / "src" / "main" / "java" / "local" / "explainstream"
    java_dir.mkdir(parents=True)
    (project / "src" / "main" / "resources").mkdir(parents=True)
    (project / "pom.xml").write_text(
        _POM.format(apicurio=APICURIO_VERSION, quarkus=QUARKUS_VERSION)
    )
    (project / "settings.xml").write_text(_SETTINGS)
    (java_dir / "NoDynamicConfig.java").write_text(_BEAN)
    (project / "src" / "main" / "resources" / "application.properties").write_text(_PROPERTIES)
    if not quiet:
        print(
            f"building Apicurio Registry {APICURIO_VERSION} with Maven (once, a few minutes) ...",
            file=sys.stderr,
        )
    env = {**os.environ, "JAVA_HOME": str(Path(find_java()).resolve().parents[1])}
    proc = subprocess.run(
        [mvn, "-B", "-q", "-s", "settings.xml", "package", "-DskipTests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    built = project / "target"
    if proc.returncode != 0 or not (built / "apicurio-runner-1-runner.jar").is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RegistryLaunchError(f"Maven could not build Apicurio Registry:\n{tail}")
    app = cache / "app"
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    shutil.copy2(built / "apicurio-runner-1-runner.jar", app)
    shutil.copytree(built / "lib", app / "lib")
    shutil.rmtree(project, ignore_errors=True)
    (cache / ".complete").write_text(APICURIO_VERSION)
    return runner


class ApicurioRegistry:
    """One Apicurio Registry process on loopback with in-memory storage.

    ``start()`` returns the Confluent-compatible base URL; ``stop()`` ends the process it
    started (and only that one). Use as a context manager in tests.
    """

    def __init__(self, log_path: Path, *, port: int | None = None) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ccompat (Confluent Schema Registry API) base URL."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def start(self, timeout_s: float = 180.0) -> str:
        """Start the registry and wait until its ccompat API answers."""
        runner = fetch_registry(quiet=True)
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [
                find_java(),
                "-Xmx512m",
                f"-Dquarkus.http.port={self.port}",
                "-Dquarkus.http.host=127.0.0.1",
                "-Dquarkus.management.enabled=false",
                "-jar",
                str(runner),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryLaunchError(f"Apicurio Registry exited:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/subjects", timeout=2) as resp:
                    if resp.status == 200:
                        return self.url
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RegistryLaunchError(
            f"Apicurio Registry did not answer within {timeout_s:g}s:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 20 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ApicurioRegistry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """``python -m consumer.dev.registry``: build (once) and print the runner jar's path."""
    print(fetch_registry())
    return 0


if __name__ == "__main__":
    sys.exit(main())
