"""Parsed instances waiting for the model are bounded in total (MODEL_MAX_QUEUED_INSTANCES).

The body budget bounds bodies until they are parsed; the instances parsed from them wait in the
batcher. Past the bound a request is refused whole with 429 and Retry-After before any of its
instances is queued; the ones admitted are all answered, and the refused one is answered once
resent. The model's one worker thread is held by a task the test releases, so the instances
wait for a state, never for a time: first on the batcher alone, then through the real app on
the real embedding model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from model_server.app import create_app
from model_server.backends.base import Instance
from model_server.backends.embedding import EmbeddingBackend
from model_server.batching import DynamicBatcher, QueueFullError
from model_server.settings import ServerSettings

LIMIT = 5


def instances(prefix: str, count: int) -> list[Instance]:
    return [Instance(f"{prefix} {index}", ("yes", "no")) for index in range(count)]


def wait_for(condition: object, what: str) -> None:
    """Poll a state (not a duration) for at most 60 s."""
    deadline = time.monotonic() + 60
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_the_batcher_admits_up_to_the_bound_and_refuses_one_past_it(
    embedding_backend: EmbeddingBackend,
) -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher(
            embedding_backend,
            max_batch_rows=64,
            max_wait_seconds=0.0,
            fair_quantum_rows=64,
            max_queued_instances=LIMIT,
        )
        batcher.start()
        model_thread_free = threading.Event()
        try:
            # The model's only worker thread is busy until the test says so.
            blocker = batcher.executor.submit(model_thread_free.wait, 60)
            first = asyncio.ensure_future(batcher.predict(instances("first", 3)))
            second = asyncio.ensure_future(batcher.predict(instances("second", 2)))
            await asyncio.sleep(0)
            assert batcher.admitted_instances == LIMIT  # 3 + 2: at the bound, both admitted
            with pytest.raises(QueueFullError, match="has 5 instances .* adds 1") as refused:
                await batcher.predict(instances("third", 1))
            assert (refused.value.status_code, refused.value.retry_after_seconds) == (429, 1)
            assert batcher.admitted_instances == LIMIT  # the refused request queued nothing
            model_thread_free.set()
            blocker.result(timeout=60)
            answered = [*(await first), *(await second)]
            assert [a.sequence for a in answered] == [
                *(f"first {i}" for i in range(3)),
                *(f"second {i}" for i in range(2)),
            ]
            assert batcher.admitted_instances == 0
            # Resent, the refused request (and a full one at the bound) is answered.
            assert len(await batcher.predict(instances("third", 1))) == 1
            assert len(await batcher.predict(instances("full", LIMIT))) == LIMIT
        finally:
            model_thread_free.set()
            await batcher.stop()

    asyncio.run(scenario())


def test_a_bound_smaller_than_one_request_is_refused_at_settings_load() -> None:
    assert ServerSettings(model_max_instances=LIMIT, model_max_queued_instances=LIMIT)
    with pytest.raises(ValueError, match="MODEL_MAX_QUEUED_INSTANCES=4 is smaller"):
        ServerSettings(model_max_instances=LIMIT, model_max_queued_instances=LIMIT - 1)


@pytest.fixture
def client(embedding_backend: EmbeddingBackend) -> Iterator[TestClient]:
    settings = ServerSettings(
        model_max_instances=3,
        model_max_queued_instances=LIMIT,
        model_max_batch_size=8,
        model_batch_pool_rows=64,
        model_batch_wait_ms=0,
    )
    app = create_app(settings, backend=embedding_backend, load_on_startup=False)
    with TestClient(app) as test_client:
        yield test_client


def post(client: TestClient, prefix: str, count: int) -> httpx.Response:
    body = {"instances": [f"{prefix} {index}" for index in range(count)]}
    return client.post("/predict", json=body)


def test_the_server_answers_429_with_retry_after_one_past_the_bound_and_loses_nothing(
    client: TestClient,
) -> None:
    batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
    model_thread_free = threading.Event()
    blocker = batcher.executor.submit(model_thread_free.wait, 60)
    try:
        with ThreadPoolExecutor(max_workers=2) as senders:
            first: Future[httpx.Response] = senders.submit(post, client, "first", 3)
            wait_for(lambda: batcher.admitted_instances == 3, "the first request's 3 instances")
            second: Future[httpx.Response] = senders.submit(post, client, "second", 2)
            wait_for(lambda: batcher.admitted_instances == LIMIT, "5 instances: the bound")

            refused = post(client, "third", 1)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert "MODEL_MAX_QUEUED_INSTANCES" in refused.json()["error"]

            model_thread_free.set()
            blocker.result(timeout=60)
            answers = [first.result(timeout=60), second.result(timeout=60)]
        assert [a.status_code for a in answers] == [200, 200]
        sequences = [p["sequence"] for a in answers for p in a.json()["predictions"]]
        assert sequences == [*(f"first {i}" for i in range(3)), *(f"second {i}" for i in range(2))]
        # Resent after the wait it was told, the refused request is answered.
        resent = post(client, "third", 1)
        assert resent.status_code == 200
        assert [p["sequence"] for p in resent.json()["predictions"]] == ["third 0"]
        assert batcher.admitted_instances == 0
    finally:
        model_thread_free.set()
