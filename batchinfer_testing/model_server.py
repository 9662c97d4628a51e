"""Our model server as a real process (embedding backend on CPU), for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from batchinfer_testing.processes import free_port, stop_process_group, wait_until_healthy

REPO_ROOT = Path(__file__).resolve().parent.parent
# The model id the embedding backend reports for the packaged all-MiniLM-L6-v2 weights: the
# lineage key of every prediction the tests store.
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def rss_kib(pid: int) -> int:
    """VmRSS of a live process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS in /proc/{pid}/status")


class ModelServer:
    """``python -m model_server`` on a port of its own, killable and restartable at will.

    ``env`` adds or overrides server settings (``MODEL_MAX_BATCH_SIZE``, ``MODEL_BACKEND``, …);
    the output goes to ``log`` so a failed start shows why.
    """

    def __init__(
        self, port: int | None = None, *, cpus: frozenset[int] | None = None, **env: str
    ) -> None:
        self.port = port or free_port()
        # CPUs the server may run on (``os.sched_setaffinity``, inherited by all its threads);
        # None: wherever the caller may.
        self.cpus = cpus
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"model-server-{self.port}.log"

    def start(self, *, wait: bool = True) -> None:
        environment = {
            **os.environ,
            "AIP_HTTP_PORT": str(self.port),
            "MODEL_BACKEND": "embedding",
            "MODEL_DEVICE": "cpu",
            "MODEL_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            **self.env,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "model_server"],
                cwd=REPO_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if self.cpus is None else self._pin,
            )
        if wait:
            self.wait_healthy()

    def _pin(self) -> None:
        os.sched_setaffinity(0, self.cpus)

    def wait_healthy(self, timeout: float = 240) -> None:
        if self.process is None:
            raise RuntimeError("the model server was never started")
        wait_until_healthy(
            f"{self.url}/health", self.process, timeout=timeout, output=self.log.read_text
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process group (SIGTERM: graceful; SIGKILL: like an OOM kill)."""
        if self.process is not None:
            stop_process_group(self.process, sig, timeout=15)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, like an OOM kill or a lost machine: no graceful shutdown."""
        self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the model server is not running")
        return self.process.pid


def scrape(url: str, name: str) -> float:
    """The sum of ``name``'s samples on the server's ``/metrics`` (e.g.
    ``model_server_batch_seconds_sum``: seconds the model spent on batches since it started)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


@contextlib.contextmanager
def running_model_server(
    port: int | None = None, *, cpus: frozenset[int] | None = None, **env: str
) -> Iterator[ModelServer]:
    """A started, healthy model server, stopped when the block ends (``cpus``: its CPUs)."""
    server = ModelServer(port, cpus=cpus, **env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
