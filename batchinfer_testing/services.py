"""Real servers: a PostgreSQL server and the Google Pub/Sub emulator, for tests and a laptop.

Both start from binaries on PATH, on free loopback ports, and stop when their context ends. The
emulator is a ``gcloud`` wrapper around a Java child, so it runs in its own process group and the
whole group is stopped. A missing binary raises ``ServiceUnavailableError``: the tests skip on it
outside CI and fail on it in CI (``tests/services.py``); ``batchinfer_tools.stack`` reports it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batchinfer_testing.processes import free_port, stop_process_group


class ServiceUnavailableError(RuntimeError):
    """A server's binaries are not on PATH; the message names them."""


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _as_postgres(*args: str) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the ``postgres`` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return list(args)


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster with trust auth on loopback."""

    data_dir: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def postmaster_pid(self) -> int:
        """The server's main process (``postmaster.pid``'s first line); pg_ctl detaches it."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def pg_ctl(self, action: str, *extra: str) -> None:
        subprocess.run(
            _as_postgres("pg_ctl", action, "-D", str(self.data_dir), "-w", "-t", "60", *extra),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir}"
        options += " -c max_connections=200 -c fsync=off -c full_page_writes=off"
        log = self.data_dir / "server.log"
        self.pg_ctl("start", "-o", options, "-l", str(log))

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self) -> None:
        """Stop (fast: disconnects every client) and start again on the same port."""
        self.stop("fast")
        self.start()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        raise ServiceUnavailableError("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    root = Path(tempfile.mkdtemp(prefix="batchinfer-pg-"))
    data_dir = root / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(data_dir, "postgres", "postgres")
    subprocess.run(
        _as_postgres("initdb", "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(data_dir=data_dir, port=free_port())
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PubSubEmulator:
    host: str
    process: subprocess.Popen


@contextlib.contextmanager
def pubsub_emulator(project: str = "local-project") -> Iterator[PubSubEmulator]:
    if not shutil.which("gcloud") or not shutil.which("java"):
        raise ServiceUnavailableError("the Pub/Sub emulator (gcloud, java) is not on PATH")
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="batchinfer-pubsub-")
    log = open(Path(data_dir) / "emulator.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--project={project}",
            f"--host-port=127.0.0.1:{port}",
            f"--data-dir={data_dir}",
            "--quiet",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=90, process=process)
        yield PubSubEmulator(host=f"127.0.0.1:{port}", process=process)
    finally:
        stop_process_group(process, timeout=15)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
