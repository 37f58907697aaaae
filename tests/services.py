"""Real servers for tests: a database of our own on the machine's PostgreSQL, a Ray head, an MLflow server.

Each helper starts only what it owns (free loopback ports, its own temp dir) and stops only that.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = REPO / "examples" / "mmvp-sample"
STUDY = "tiny-llava:mmvp:paper"
SWEEP_MARK = "VARSWEEP_TEST_SWEEP"  # set in a Sweep's environment, which Ray's workers inherit
BASE_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("VARSWEEP_", "MLFLOW_", "RAY_ADDRESS"))
} | {
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",  # no hub here: a model name that is not local fails at once
}
PG_ADMIN = os.environ.get("VARSWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, *, timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def postgres_database(admin_url: str = PG_ADMIN) -> Iterator[str]:
    """A fresh database on the shared server, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"varsweep_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def processes() -> Iterator[tuple[int, str]]:
    """Every process but this one: its pid and command line (arguments joined by spaces)."""
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        if pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield pid, cmdline


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(*pids: int) -> set[int]:
    """Every process whose parent chain leads to one of ``pids`` (a driver's local Ray: GCS, raylet, workers)."""
    parents = {pid: parent_of(pid) for pid, _ in processes()}
    found: set[int] = set()
    while grown := {pid for pid, parent in parents.items() if parent in found.union(pids)} - found:
        found |= grown
    return found


def _kill_tree_by_marker(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (our own temp dir, a node's port), and their
    descendants: Ray's agents rename themselves (``ray::DashboardAgent``) and would outlive a killed raylet."""
    marked = {pid for pid, cmdline in processes() if marker in cmdline}
    for pid in marked | descendants(*marked):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def run_python(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """``python *args`` (this interpreter) in ``cwd``: asserts that it succeeded, returns what it printed (stdout,
    then stderr)."""
    out = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


class RayHead:
    """``ray start --head`` on loopback with free ports and a temp dir of its own."""

    def __init__(self, *, num_cpus: int = 2, nodes: bool = False) -> None:
        """``nodes``: other nodes will join (:meth:`add_node`); a single-node head keeps every listener on
        loopback, which Ray only does for a cluster of one node (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""
        # a short path: Ray's unix sockets live under it, and socket paths are limited to 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vsray-", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.node_manager_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",  # a throwaway local head, on loopback only
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        if not nodes:
            self.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        command = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}",
            *self._node_options(self.node_manager_port, num_cpus),
        ]
        started = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {started.stderr[-2000:]}")
        wait_until(self._dashboard_up, timeout=60, what="Ray dashboard")

    def _node_options(self, node_manager_port: int, num_cpus: int) -> list[str]:
        """What every node of this cluster is started with, the head's and the others': free ports, this
        cluster's temp dir, CPUs only."""
        return [
            f"--node-manager-port={node_manager_port}",
            f"--object-manager-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
        ]

    def _dashboard_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def submit(
        self, entrypoint: list[str], *, env_vars: dict[str, str], timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """``ray job submit`` (waits for the job) from the repo as working dir."""
        import json

        command = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps({"env_vars": env_vars}),
            "--",
            *entrypoint,
        ]
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def add_node(self, *, num_cpus: int) -> int:
        """``ray start --address`` a worker node of its own on this machine; returns its node manager port (the
        handle :meth:`kill_node` takes)."""
        port = free_port()
        command = [
            str(BIN / "ray"),
            "start",
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            *self._node_options(port, num_cpus),
        ]
        started = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            raise RuntimeError(f"ray start --address failed: {started.stderr[-2000:]}")
        return port

    def kill_node(self, port: int) -> None:
        """SIGKILL the raylet of the node started with ``port`` (a node lost): its workers die with it."""
        _kill_tree_by_marker(f"--node_manager_port={port}")

    def node_of(self, pid: int) -> int | None:
        """The node manager port of the node whose raylet started process ``pid`` (None: not found)."""
        parent = parent_of(pid)
        if parent is None:
            return None
        try:
            cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
        found = re.search(r"--node_manager_port=(\d+)", cmdline)
        return int(found.group(1)) if found else None

    def stop(self) -> None:
        _kill_tree_by_marker(str(self.temp_dir))
        _kill_tree_by_marker(f"--address={self.address}")  # the Ray Client server: no temp dir in its command
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` with a SQLite backend and local artifacts, on a free loopback port (or ``port``)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._healthy, timeout=90, what="MLflow server")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


class ThrowawayPostgres:
    """A PostgreSQL server of our own (``initdb`` + ``pg_ctl`` on a free port), so a test may stop and restart it.

    Runs as the ``postgres`` system user when started as root (initdb refuses root).
    """

    def __init__(self, root: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = bins[-1].parent
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self.start()

    def _as_postgres(self, command: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.root / "log"),
                "-w",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")


class Sweep:
    """``python sweep/main.py`` in a working folder of its own, output captured to a file."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log = workdir / "sweep.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "sweep" / "main.py"), *args],
            cwd=workdir,
            env=BASE_ENV | {SWEEP_MARK: str(workdir)} | (env or {}),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The ``ray::ModelWorker`` processes of this sweep (tests run side by side: others have their own)."""
        mark = f"{SWEEP_MARK}={self.workdir}".encode()
        pids = []
        for pid, cmdline in processes():
            if not cmdline.startswith("ray::ModelWorker"):
                continue
            with contextlib.suppress(OSError):
                if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pids.append(pid)
        return pids

    def wait_for(self, pattern: str, timeout: float = 300) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and not re.search(pattern, self.text()):
                raise AssertionError(
                    f"sweep exited ({self.process.returncode}) before {pattern!r}:\n{self.text()[-3000:]}"
                )
            return re.search(pattern, self.text()) is not None

        wait_until(seen, timeout=timeout, what=f"log line {pattern!r}", interval=0.1)

    def finish(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout=timeout)
        self._log_file.close()
        return code


def sweep_args(trials: int, *extra: str) -> list[str]:
    return ["--task", "mmvp", "--data-dir", str(SAMPLE), "--trials", str(trials), *extra]
