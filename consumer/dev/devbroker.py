"""A real local Apache Kafka (KRaft) for development and tests, without Docker.

The broker jars come from Maven Central (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies plus a log4j2 backend), resolved with Maven once and cached under
``~/.cache/explainstream/kafka/<version>``. Storage is formatted with
``kafka.tools.StorageTool`` and each node runs ``kafka.Kafka`` with Java 17+ on 127.0.0.1.
``brokers=3`` gives a 3-node cluster of combined broker+controller nodes (replication
factor 3, min.insync.replicas 2) on consecutive ports. ``security`` makes the client
listener SASL_SSL with SCRAM-SHA-512 (see :mod:`consumer.dev.brokersec`); ``proxied`` adds a
plaintext listener advertised at another address (a fault-injecting TCP proxy in front of it).
Single nodes can be frozen, thawed, killed and restarted on their data (fault tests).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from consumer.dev.brokersec import BrokerSecurity
from consumer.dev.kafkajars import KAFKA_VERSION, DevBrokerError, fetch_jars, find_java
from consumer.dev.ports import free_base

if TYPE_CHECKING:
    pass

__all__ = [
    "KAFKA_VERSION",
    "DevBroker",
    "DevBrokerError",
    "fetch_jars",
    "find_java",
]

_CONTROLLER_PORT_OFFSET = 1000
_MAIN_CLASS = "kafka.Kafka"


def default_data_dir() -> Path:
    """Where broker data and pid files live unless --data-dir says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "explainstream" / "dev-broker"


_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port_block(count: int) -> int:
    """A base port such that ``base..base+count-1`` and their controller ports are free."""
    offsets = list(range(count))
    return free_base(offsets + [o + _CONTROLLER_PORT_OFFSET for o in offsets])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class DevBroker:
    """One local KRaft cluster of ``brokers`` combined nodes rooted at ``data_dir``."""

    data_dir: Path
    port: int = 9092
    brokers: int = 1
    heap_mb: int = 512
    security: BrokerSecurity | None = None
    # (bind port, advertised port) of an extra PLAINTEXT listener "PROXIED" (one node only):
    # clients bootstrapping through a proxy at the advertised port keep using the proxy.
    proxied: tuple[int, int] | None = None

    @property
    def bootstrap(self) -> str:
        """Comma-separated bootstrap address of all nodes."""
        return ",".join(f"127.0.0.1:{self.port + i}" for i in range(self.brokers))

    def _node_dir(self, node: int) -> Path:
        return self.data_dir / f"node-{node}"

    def _pid_file(self, node: int) -> Path:
        return self._node_dir(node) / "broker.pid"

    def _props_file(self, node: int) -> Path:
        return self._node_dir(node) / "server.properties"

    def _read_pid(self, node: int) -> int | None:
        try:
            pid = int(self._pid_file(node).read_text().strip())
        except (OSError, ValueError):
            return None
        # Only a live process running *our* properties file counts as ours.
        if _pid_alive(pid) and str(self._props_file(node)) in _cmdline(pid):
            return pid
        return None

    def running_pids(self) -> list[int]:
        """Pids of this cluster's live nodes."""
        return [pid for n in range(self.brokers) if (pid := self._read_pid(n)) is not None]

    def is_up(self) -> bool:
        """True when every node's process lives and its broker port accepts connections."""
        return len(self.running_pids()) == self.brokers and all(
            _port_open(self.port + i) for i in range(self.brokers)
        )

    def _properties(self, node: int) -> str:
        n = self.brokers
        voters = ",".join(
            f"{i + 1}@127.0.0.1:{self.port + i + _CONTROLLER_PORT_OFFSET}" for i in range(n)
        )
        port = self.port + node
        cport = port + _CONTROLLER_PORT_OFFSET
        rf = min(3, n)
        min_isr = 2 if n >= 3 else 1
        main = "SASL_SSL" if self.security else "PLAINTEXT"
        listeners = [f"{main}://127.0.0.1:{port}"]
        advertised = [f"{main}://127.0.0.1:{port}"]
        protocols = [f"{main}:{main}", "CONTROLLER:PLAINTEXT"]
        if self.proxied:
            listeners.append(f"PROXIED://127.0.0.1:{self.proxied[0]}")
            advertised.append(f"PROXIED://127.0.0.1:{self.proxied[1]}")
            protocols.append("PROXIED:PLAINTEXT")
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node + 1),
            "controller.quorum.voters": voters,
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{cport}"]),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": main,
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self._node_dir(node) / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.hours": "168",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min_isr),
        }
        if self.security:
            lines.update(self.security.listener_properties())
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _classpath(self, lib: Path) -> str:
        return os.pathsep.join(sorted(str(p) for p in lib.glob("*.jar")))

    def start(self, *, timeout_s: float = 90.0, quiet: bool = False) -> str:
        """Start the cluster (idempotent) and return the bootstrap address once it answers."""
        if self.is_up():
            return self.bootstrap
        if self.running_pids():
            self.stop()
        if self.proxied and self.brokers != 1:
            raise DevBrokerError("a proxied listener needs a single-node broker")
        java = find_java()
        lib = fetch_jars(quiet=quiet)
        for node in range(self.brokers):
            port = self.port + node
            for p in (port, port + _CONTROLLER_PORT_OFFSET):
                if _port_open(p):
                    raise DevBrokerError(f"port {p} on 127.0.0.1 is already in use")
        cluster_file = self.data_dir / "cluster.id"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if cluster_file.exists():
            cluster_id = cluster_file.read_text().strip()
        else:
            cluster_id = _cluster_id()
            cluster_file.write_text(cluster_id)
        jvms = {node: self._jvm(node, java, lib) for node in range(self.brokers)}
        for node, jvm in jvms.items():
            self._format(node, jvm, cluster_id)
        procs = {node: self._launch(node, jvm) for node, jvm in jvms.items()}
        try:
            self._wait_started(procs, timeout_s)
        except DevBrokerError:
            self.stop()
            raise
        return self.bootstrap

    def _jvm(self, node: int, java: str, lib: Path) -> list[str]:
        ndir = self._node_dir(node)
        ndir.mkdir(parents=True, exist_ok=True)
        self._props_file(node).write_text(self._properties(node))
        log4j = ndir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=ndir / "server.log"))
        return [
            java,
            f"-Xms{self.heap_mb // 2}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={ndir}",
            "-cp",
            self._classpath(lib),
        ]

    def _format(self, node: int, jvm: list[str], cluster_id: str) -> None:
        if (self._node_dir(node) / "data" / "meta.properties").exists():
            return
        extra = self.security.format_args() if self.security else []
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(self._props_file(node)),
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise DevBrokerError(
                f"formatting KRaft storage failed: {fmt.stderr.strip() or fmt.stdout}"
            )

    def _launch(self, node: int, jvm: list[str]) -> subprocess.Popen[bytes]:
        ndir = self._node_dir(node)
        # A restarted node must not count the previous run's "started" line as its own.
        with contextlib.suppress(OSError):
            (ndir / "server.log").rename(ndir / "server.log.prev")
        with (ndir / "stdout.log").open("ab") as out:
            proc = subprocess.Popen(
                [*jvm, _MAIN_CLASS, str(self._props_file(node))],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file(node).write_text(str(proc.pid))
        return proc

    def _wait_started(self, procs: dict[int, subprocess.Popen[bytes]], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node, proc in procs.items():
                if proc.poll() is not None:
                    log = (self._node_dir(node) / "server.log").read_text(errors="replace")
                    raise DevBrokerError(
                        f"broker node {node + 1} exited with {proc.returncode}; "
                        f"last log lines:\n{''.join(log.splitlines(True)[-15:])}"
                    )
            if all(_port_open(self.port + n) for n in procs) and self._ready(list(procs)):
                return
            time.sleep(0.25)
        raise DevBrokerError(f"broker did not answer within {timeout_s:.0f}s")

    # -- faults (tests) -------------------------------------------------------------------

    def node_pid(self, node: int = 0) -> int:
        """Pid of a live node, or DevBrokerError."""
        pid = self._read_pid(node)
        if pid is None:
            raise DevBrokerError(f"broker node {node + 1} is not running")
        return pid

    def freeze(self, node: int = 0) -> None:
        """SIGSTOP one node (a long GC pause or VM stall)."""
        os.kill(self.node_pid(node), signal.SIGSTOP)

    def thaw(self, node: int = 0) -> None:
        """SIGCONT a frozen node."""
        os.kill(self.node_pid(node), signal.SIGCONT)

    def kill_node(self, node: int = 0) -> None:
        """SIGKILL one node (no clean shutdown) and reap it."""
        pid = self.node_pid(node)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _pid_alive(pid) and time.monotonic() < deadline:
            _reap([pid])
            time.sleep(0.05)
        self._pid_file(node).unlink(missing_ok=True)

    def restart_node(self, node: int = 0, *, timeout_s: float = 90.0) -> None:
        """Start one stopped node again on its existing data directory."""
        if self._read_pid(node) is not None:
            raise DevBrokerError(f"broker node {node + 1} is still running")
        jvm = self._jvm(node, find_java(), fetch_jars(quiet=True))
        proc = self._launch(node, jvm)
        self._wait_started({node: proc}, timeout_s)

    def _ready(self, nodes: list[int] | None = None) -> bool:
        """True once every node (of ``nodes``) logged that its broker finished starting."""
        for node in range(self.brokers) if nodes is None else nodes:
            log = self._node_dir(node) / "server.log"
            try:
                text = log.read_text(errors="replace")
            except OSError:
                return False
            if "Kafka Server started" not in text:
                return False
        return True

    def stop(self, *, grace_s: float = 20.0) -> int:
        """SIGTERM our nodes, SIGKILL any still alive after ``grace_s``; returns how many."""
        pids = self.running_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            _reap(pids)
            time.sleep(0.1)
        for pid in pids:
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _reap(pids)
        for node in range(self.brokers):
            self._pid_file(node).unlink(missing_ok=True)
        return len(pids)


def _reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _cluster_id() -> str:
    # KRaft cluster ids are base64url-encoded 16-byte UUIDs without padding.
    import base64

    # Like Kafka's Uuid.randomUuid: never start with "-", which CLIs read as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
