"""The shared body budget: the sum of bodies held at once is bounded, at the budget and one past.

The budget's arithmetic on its own, then through the real `python -m model_server` with raw
sockets that hold their bodies open: the server's gauge says when it holds a body, so the test
waits for a state, never for a time.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from batchinfer_testing.model_server import ModelServer
from model_server.body_budget import BodyBudget, BodyBudgetFullError
from model_server.settings import ServerSettings

BUDGET = 3000
BODY = 1000  # the per-request limit: three bodies at it fill the budget
SMALL = 100  # a small valid body


def test_the_budget_holds_its_limit_and_refuses_one_byte_past_it() -> None:
    seen: list[int] = []
    budget = BodyBudget(10, on_change=seen.append)
    with budget.hold() as first, budget.hold() as second:
        first.cover(6)
        second.cover(4)  # 10 of 10: at the limit
        with pytest.raises(BodyBudgetFullError, match="holds 10 bytes .* needs 1 more") as raised:
            second.cover(5)
        assert (raised.value.status_code, raised.value.retry_after_seconds) == (429, 1)
        assert (first.bytes, second.bytes, budget.held_bytes) == (6, 4, 10)
        first.cover(3)  # already covered: takes nothing
        assert budget.held_bytes == 10
    assert budget.held_bytes == 0
    assert seen == [6, 10, 6, 0]


def test_a_hold_is_given_back_when_its_request_fails() -> None:
    budget = BodyBudget(10, on_change=lambda held: None)

    def request_that_times_out() -> None:
        with budget.hold() as hold:
            hold.cover(7)
            assert budget.held_bytes == 7
            raise TimeoutError

    with pytest.raises(TimeoutError):
        request_that_times_out()
    assert budget.held_bytes == 0


def test_a_budget_smaller_than_one_body_is_refused_at_settings_load() -> None:
    assert ServerSettings(model_max_body_bytes=BODY, model_body_budget_bytes=BODY)
    with pytest.raises(ValueError, match="MODEL_BODY_BUDGET_BYTES=999 is smaller"):
        ServerSettings(model_max_body_bytes=BODY, model_body_budget_bytes=BODY - 1)


@pytest.fixture(scope="module")
def budget_server() -> Iterator[ModelServer]:
    """A server with a 3,000-byte body budget and 1,000-byte bodies."""
    server = ModelServer(
        MODEL_WARMUP="false",
        MODEL_MAX_BODY_BYTES=str(BODY),
        MODEL_BODY_BUDGET_BYTES=str(BUDGET),
        MODEL_BODY_TIMEOUT_SECONDS="600",
    )
    try:
        server.start(wait=False)
        server.wait_healthy(timeout=300)
        yield server
    finally:
        server.stop()


def held_bytes(url: str) -> int:
    metrics = httpx.get(f"{url}/metrics", timeout=60).text
    [line] = [
        line
        for line in metrics.splitlines()
        if line.startswith("model_server_body_budget_held_bytes ")
    ]
    return int(float(line.split()[1]))


def wait_for_held(url: str, expected: int) -> None:
    deadline = time.monotonic() + 60
    while (held := held_bytes(url)) != expected:
        assert time.monotonic() < deadline, f"the server holds {held} bytes, not {expected}"
        time.sleep(0.02)


def body_of(size: int) -> bytes:
    """A valid predict body of exactly `size` bytes (one text padded with spaces)."""
    body = json.dumps({"instances": ["You charged my card twice."]}).encode()
    assert size >= len(body)
    return body[:-2] + b" " * (size - len(body)) + body[-2:]


def open_body(port: int, size: int) -> tuple[socket.socket, bytes]:
    """A connection that declared a body of `size` bytes and sent all but its last byte."""
    body = body_of(size)
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: model-server\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
        + body[:-1]
    )
    return sock, body[-1:]


def response_of(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
        if b"\r\n\r\n" in received:
            head, _, rest = received.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(rest) >= length[0]:
                break
    return received


def post(url: str, size: int) -> httpx.Response:
    return httpx.post(
        f"{url}/predict",
        content=body_of(size),
        headers={"content-type": "application/json"},
        timeout=120,
    )


def test_bodies_up_to_the_budget_are_read_and_one_byte_past_it_is_refused_with_retry_after(
    budget_server: ModelServer,
) -> None:
    assert held_bytes(budget_server.url) == 0
    first, first_rest = open_body(budget_server.port, BODY)
    second, second_rest = open_body(budget_server.port, BODY)
    wait_for_held(budget_server.url, 2 * BODY)
    # 2,000 held: a third body of 1,000 fills the budget exactly and is answered.
    assert post(budget_server.url, BODY).status_code == 200
    # Now a held body of 900 leaves room for 100 more: 101 is one past.
    third, third_rest = open_body(budget_server.port, BODY - SMALL)
    wait_for_held(budget_server.url, 3 * BODY - SMALL)
    refused = post(budget_server.url, SMALL + 1)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "MODEL_BODY_BUDGET_BYTES" in refused.json()["error"]
    assert post(budget_server.url, SMALL).status_code == 200  # the budget's last 100 bytes
    # The held bodies finish and are answered; the budget is all given back.
    for sock, rest in ((first, first_rest), (second, second_rest), (third, third_rest)):
        sock.sendall(rest)
        assert response_of(sock).startswith(b"HTTP/1.1 200")
        sock.close()
    wait_for_held(budget_server.url, 0)
    assert post(budget_server.url, BODY).status_code == 200
