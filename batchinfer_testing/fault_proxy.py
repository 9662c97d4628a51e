"""An HTTP proxy in front of the model server that fails chosen requests (fault tests)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
