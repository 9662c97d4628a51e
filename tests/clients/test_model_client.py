"""The HTTP model client: answers in order, the model id as lineage key, errors by what to do.

The server side is a handler speaking the wire format of ``POST /predict`` (protocol), so each
answer shape the client must handle can be produced exactly; the real server is exercised by
the Dagster and reliability tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from batchinfer_dagster.clients.model_client import (
    READY_POLL_SECONDS,
    READY_WAIT_SECONDS,
    HttpModelClient,
    HttpModelClientConfig,
    ModelError,
    ModelRequestError,
    TransientModelError,
    read_health,
)
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import DEFAULT_MAX_REQUEST_BYTES, PredictParameters
from batchinfer_testing.deployment import model_client_of

PARAMETERS = PredictParameters(("a", "b"))
Answer = Callable[[list[str], int], httpx.Response]


def client_answering(answer: Answer, chunk_size: int = 2) -> HttpModelClient:
    calls = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        return answer(json.loads(request.content)["instances"], next(calls))

    client = model_client_of(Settings(), url="http://model.test", chunk_size=chunk_size)
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    return client


def predictions(texts: list[str], model: str | None) -> httpx.Response:
    body: dict[str, object] = {
        "predictions": [{"sequence": t, "labels": ["a", "b"], "scores": [0.7, 0.3]} for t in texts]
    }
    if model is not None:
        body["model"] = model
    return httpx.Response(200, json=body)


def test_chunks_are_joined_in_order_with_the_reported_model() -> None:
    client = client_answering(lambda texts, _: predictions(texts, "org/model-v2"))
    texts = [f"t{i}" for i in range(5)]  # chunks of 2, 2, 1

    answer = client.predict(texts, PARAMETERS)

    assert answer.model == "org/model-v2"
    assert [p.sequence for p in answer.predictions] == texts


def test_an_answer_without_a_model_id_is_refused() -> None:
    client = client_answering(lambda texts, _: predictions(texts, None))
    with pytest.raises(ModelError, match=r"without a model id"):
        client.predict(["t"], PARAMETERS)


def test_two_models_in_one_batch_is_transient() -> None:
    """A rollout between two chunks: retried, never stored under two lineage keys."""
    client = client_answering(lambda texts, call: predictions(texts, f"model-{min(call, 1)}"))
    with pytest.raises(TransientModelError, match=r"2 models \['model-0', 'model-1'\]"):
        client.predict(["t1", "t2", "t3"], PARAMETERS)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientModelError),
        (429, TransientModelError),
        (408, TransientModelError),
        (413, ModelRequestError),
        (422, ModelRequestError),
    ],
)
def test_status_codes_say_whether_to_retry(status: int, error: type[ModelError]) -> None:
    client = client_answering(lambda texts, _: httpx.Response(status, json={"error": "no"}))
    with pytest.raises(error, match=str(status)):
        client.predict(["t"], PARAMETERS)


class StartingServer:
    """A server that starts: ``/predict`` answers like ours while not ready (503, or no
    connection at all while ``refuses`` says so), ``/health`` says ``state`` until the fake
    clock reaches ``ready_at``. The clock moves only when the client sleeps."""

    def __init__(self, state: str, ready_at: float, *, refuses: bool = False) -> None:
        self.state = state
        self.ready_at = ready_at
        self.refuses = refuses
        self.now = 0.0
        self.predict_calls = 0

    def ready(self) -> bool:
        return self.now >= self.ready_at

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            if self.state == "unreachable" and not self.ready():
                raise httpx.ConnectError("connection refused", request=request)
            if self.ready():
                return httpx.Response(200, json={"status": "ready"})
            return httpx.Response(503, json={"status": self.state})
        self.predict_calls += 1
        if not self.ready():
            if self.refuses:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(
                503, json={"error": f"the model is not ready ({self.state}); retry later"}
            )
        return predictions(json.loads(request.content)["instances"], "org/model")

    def client(self) -> HttpModelClient:
        def sleep(seconds: float) -> None:
            self.now += seconds

        config = HttpModelClientConfig(
            url="http://model.test",
            timeout_seconds=120,
            chunk_size=256,
            max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
        )
        client = HttpModelClient(config, clock=lambda: self.now, sleep=sleep)
        client.client = httpx.Client(transport=httpx.MockTransport(self.handler))
        return client


@pytest.mark.parametrize("state", ["loading", "warming_up"])
@pytest.mark.parametrize("refuses", [False, True], ids=["503", "connection-refused"])
def test_a_starting_server_is_waited_for_not_failed(state: str, refuses: bool) -> None:
    server = StartingServer(state, ready_at=90.0, refuses=refuses)

    answer = server.client().predict(["t1", "t2"], PARAMETERS)

    assert [p.sequence for p in answer.predictions] == ["t1", "t2"]
    assert server.now == 90.0
    assert server.predict_calls == 2  # one refused while starting, one answered


@pytest.mark.parametrize(
    ("ready_at", "waits"),
    [(READY_WAIT_SECONDS, True), (READY_WAIT_SECONDS + READY_POLL_SECONDS, False)],
    ids=["ready-at-the-bound", "one-poll-past-the-bound"],
)
def test_the_wait_for_a_starting_server_is_bounded(ready_at: float, waits: bool) -> None:
    server = StartingServer("warming_up", ready_at=ready_at)
    client = server.client()

    if waits:
        assert client.predict(["t"], PARAMETERS).model == "org/model"
    else:
        with pytest.raises(TransientModelError, match=r"still says warming_up after waiting 600 s"):
            client.predict(["t"], PARAMETERS)
        assert server.now == READY_WAIT_SECONDS


@pytest.mark.parametrize(
    ("state", "refuses", "says"),
    [
        ("unreachable", True, "unreachable"),
        ("failed", False, "failed"),
        ("ready", False, "ready"),
    ],
    ids=["down", "failed-to-load", "ready-yet-503"],
)
def test_a_server_that_is_not_starting_is_a_transient_error_at_once(
    state: str, refuses: bool, says: str
) -> None:
    """Down, failed, or 503 while /health says ready: waiting cannot help, the retries can."""
    server = StartingServer(state, ready_at=10.0 if state != "ready" else float("inf"))
    if state == "ready":
        server.handler = lambda request: (  # type: ignore[method-assign]
            httpx.Response(200, json={"status": "ready"})
            if request.url.path == "/health"
            else httpx.Response(503, json={"error": "overloaded"})
        )
    server.refuses = refuses

    with pytest.raises(TransientModelError, match=rf"its /health: {says}"):
        server.client().predict(["t"], PARAMETERS)
    assert server.now == 0.0


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (httpx.Response(200, json={"status": "ready"}), "ready"),
        (httpx.Response(503, json={"status": "warming_up"}), "warming_up"),
        (httpx.Response(503, json={"status": "loading"}), "loading"),
        (httpx.Response(503, json={"status": "failed", "error": "no weights"}), "failed"),
        (httpx.Response(403, text="Forbidden"), "HTTP 403"),
        (None, "unreachable"),
    ],
    ids=["ready", "warming-up", "loading", "failed", "private", "down"],
)
def test_read_health_names_the_servers_state(answer: httpx.Response | None, state: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if answer is None:
            raise httpx.ConnectError("connection refused", request=request)
        return answer

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        assert read_health(client, "http://model.test/health") == state


def busy_then_ready(busy_answers: int, retry_after: str) -> tuple[HttpModelClient, list[float]]:
    """A server that answers 429 with ``Retry-After`` ``busy_answers`` times, then predicts;
    the client's clock moves only when it sleeps."""
    slept: list[float] = []
    calls = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        if next(calls) < busy_answers:
            return httpx.Response(429, headers={"retry-after": retry_after}, json={"error": "busy"})
        return predictions(json.loads(request.content)["instances"], "org/model")

    config = HttpModelClientConfig(
        url="http://model.test",
        timeout_seconds=120,
        chunk_size=256,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
    )
    client = HttpModelClient(config, clock=lambda: sum(slept), sleep=slept.append)
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    return client, slept


def test_a_busy_server_is_sent_again_after_its_retry_after() -> None:
    client, slept = busy_then_ready(3, "1")
    assert [p.sequence for p in client.predict(["t"], PARAMETERS).predictions] == ["t"]
    assert slept == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("retry_after", "waits"),
    [(str(int(READY_WAIT_SECONDS)), True), (str(int(READY_WAIT_SECONDS) + 1), False)],
    ids=["at-the-bound", "one-second-past"],
)
def test_the_wait_a_busy_server_asks_for_is_bounded(retry_after: str, waits: bool) -> None:
    client, slept = busy_then_ready(1, retry_after)
    if waits:
        assert client.predict(["t"], PARAMETERS).model == "org/model"
        assert slept == [READY_WAIT_SECONDS]
    else:
        with pytest.raises(TransientModelError, match=f"Retry-After: {retry_after}.0 past"):
            client.predict(["t"], PARAMETERS)
        assert slept == []


@pytest.mark.parametrize("retry_after", ["", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "1" * 7])
def test_a_429_without_usable_retry_after_is_transient_at_once(retry_after: str) -> None:
    client, slept = busy_then_ready(1, retry_after)
    with pytest.raises(TransientModelError, match="answered 429"):
        client.predict(["t"], PARAMETERS)
    assert slept == []
