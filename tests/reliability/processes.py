"""Real processes for the fault tests: the model server that can be killed and restarted, a
fault-injecting HTTP proxy in front of it, and process-group helpers so nothing outlives a test.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from batchinfer_dagster.processes import free_port, stop_process_group, wait_until_healthy

REPO_ROOT = Path(__file__).resolve().parents[2]


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a child started with ``start_new_session=True`` and all of its children."""
    stop_process_group(process, sig, timeout=15)


def rss_kib(pid: int) -> int:
    """VmRSS of a live process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS in /proc/{pid}/status")


class ModelServer:
    """``python -m model_server`` (embedding backend, CPU) on a fixed port, killable at will."""

    def __init__(self, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
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
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 240) -> None:
        if self.process is None:
            raise RuntimeError("the model server was never started")
        wait_until_healthy(
            f"{self.url}/health", self.process, timeout=timeout, output=self.log.read_text
        )

    def kill(self) -> None:
        """SIGKILL, like an OOM kill or a lost machine: no graceful shutdown."""
        if self.process is not None:
            kill_group(self.process, signal.SIGKILL)
            self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "model server not started"
        return self.process.pid


@contextlib.contextmanager
def running_model_server(**env: str) -> Iterator[ModelServer]:
    server = ModelServer(**env)
    try:
        server.start()
        yield server
    finally:
        server.kill()


FaultRule = Callable[[bytes, int], str | None]


class FaultProxy:
    """An HTTP proxy in front of the model server that fails chosen requests.

    ``rule(body, seen)`` gets the request body and how many times that exact body came before,
    and answers ``"500"`` (an error page), ``"slow"`` (sleep ``slow_seconds`` then forward,
    past the client's timeout) or ``None`` (forward). What it did is counted in ``faults``.
    """

    def __init__(self, upstream: str, rule: FaultRule, *, slow_seconds: float = 3.0) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.rule = rule
        self.slow_seconds = slow_seconds
        self.faults: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.on_request: Callable[[], None] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _decide(self, body: bytes) -> str | None:
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            seen = self.seen[digest]
            self.seen[digest] += 1
            action = self.rule(body, seen)
            self.faults[action or "forwarded"] += 1
        return action

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet: the test reports what the proxy did through ``faults``."""

            def _forward(self, method: str, body: bytes | None) -> None:
                host, _, port = proxy.upstream.partition(":")
                upstream = http.client.HTTPConnection(host, int(port), timeout=120)
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                upstream.request(method, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self._send(answer.status, data, answer.getheader("Content-Type"))

            def _send(self, status: int, data: bytes, content_type: str | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type or "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET", None)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if proxy.on_request is not None:
                    proxy.on_request()
                action = proxy._decide(body)
                if action == "500":
                    self._send(500, b"injected internal error", "text/plain")
                    return
                if action == "slow":
                    time.sleep(proxy.slow_seconds)
                self._forward("POST", body)

        return Handler

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
