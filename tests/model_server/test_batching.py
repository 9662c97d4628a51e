"""The dynamic batcher, with a small backend that records what it is asked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
import torch

from batchinfer_protocol.zero_shot import Prediction
from model_server.backends.base import Backend, Instance
from model_server.batching import DynamicBatcher, ShuttingDownError

POISON = "the model cannot take this"


class RecordingBackend(Backend):
    """Answers with the text's length as a score; fails any batch that holds POISON."""

    backend_name = "recording"

    def __init__(self) -> None:
        super().__init__("recording", torch.device("cpu"))
        self.batches: list[list[str]] = []

    def load(self) -> None:
        self.loaded = True

    def rows(self, instance: Instance) -> int:
        return len(instance.labels)

    def prepare(self, instances: Sequence[Instance]) -> list[Instance]:
        return list(instances)

    def compute(self, instances: list[Instance]) -> list[Prediction]:
        self.batches.append([instance.text for instance in instances])
        if any(instance.text == POISON for instance in instances):
            raise ValueError(f"cannot classify {POISON!r}")
        return [Prediction(i.text, list(i.labels), [float(len(i.text))]) for i in instances]


async def run_requests(
    backend: RecordingBackend, requests: list[list[str]], max_rows: int
) -> list[list[Prediction] | BaseException]:
    batcher = DynamicBatcher(
        backend, max_batch_rows=max_rows, max_wait_seconds=0.05, fair_quantum_rows=2
    )
    batcher.start()
    try:
        return await asyncio.gather(
            *(
                batcher.predict([Instance(text, ("a", "b")) for text in texts])
                for texts in requests
            ),
            return_exceptions=True,
        )
    finally:
        await batcher.stop()


def test_concurrent_requests_share_batches_within_the_row_limit() -> None:
    backend = RecordingBackend()
    requests = [[f"r{r}-{i}" for i in range(3)] for r in range(4)]
    answers = asyncio.run(run_requests(backend, requests, max_rows=8))
    for texts, answer in zip(requests, answers, strict=True):
        assert [prediction.sequence for prediction in answer] == texts
    # Twelve instances of two rows each, at most eight rows (four instances) per batch.
    assert [len(batch) for batch in backend.batches] == [4, 4, 4]
    assert sorted(text for batch in backend.batches for text in batch) == sorted(
        text for texts in requests for text in texts
    )


def test_a_failing_instance_fails_only_its_own_request() -> None:
    backend = RecordingBackend()
    requests = [["good one", "good two"], ["fine", POISON], ["also good"]]
    answers = asyncio.run(run_requests(backend, requests, max_rows=64))
    assert [prediction.sequence for prediction in answers[0]] == ["good one", "good two"]
    assert isinstance(answers[1], RuntimeError)
    assert [prediction.sequence for prediction in answers[2]] == ["also good"]


def test_stop_fails_queued_instances() -> None:
    async def scenario() -> None:
        # Never started: what is queued can only be failed by stop().
        batcher = DynamicBatcher(
            RecordingBackend(), max_batch_rows=8, max_wait_seconds=0.01, fair_quantum_rows=2
        )
        waiting = asyncio.ensure_future(batcher.predict([Instance("never run", ("a",))]))
        await asyncio.sleep(0)
        await batcher.stop()
        with pytest.raises(ShuttingDownError, match="shutting down"):
            await waiting

    asyncio.run(scenario())


class OverlapBackend(RecordingBackend):
    """Its first compute waits (up to 10 s) for a second pool to be prepared meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared_pools = 0
        self.second_prepared = threading.Event()
        self.overlapped: bool | None = None

    def prepare(self, instances: Sequence[Instance]) -> list[Instance]:
        self.prepared_pools += 1
        if self.prepared_pools == 2:
            self.second_prepared.set()
        return super().prepare(instances)

    def compute(self, instances: list[Instance]) -> list[Prediction]:
        if self.overlapped is None:
            self.overlapped = self.second_prepared.wait(timeout=10)
        return super().compute(instances)


def two_requests_apart(backend: RecordingBackend, max_batch_rows: int) -> list[list[Prediction]]:
    """Requests "first" and "second" (two rows each), the second sent 50 ms after the first:
    past the batcher's 10 ms wait, so the first's pool has gone (and is computing)."""

    async def scenario() -> list[list[Prediction]]:
        batcher = DynamicBatcher(
            backend, max_batch_rows=max_batch_rows, max_wait_seconds=0.01, fair_quantum_rows=2
        )
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.predict([Instance("first", ("a", "b"))]))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(batcher.predict([Instance("second", ("a", "b"))]))
            return list(await asyncio.gather(first, second))
        finally:
            await batcher.stop()

    return asyncio.run(scenario())


def test_the_next_pool_is_tokenized_while_the_model_computes() -> None:
    backend = OverlapBackend()
    answers = two_requests_apart(backend, max_batch_rows=2)
    assert backend.overlapped is True
    assert [answer[0].sequence for answer in answers] == ["first", "second"]
    assert backend.batches == [["first"], ["second"]]


def test_instances_queued_when_the_wait_ends_join_the_pool() -> None:
    """A request queued after the pool's wait timed out, but before the collector resumed,
    joins that pool rather than starting a pool of its own (a second, smaller forward pass).

    The server met this race under load: the timer that ends the wait fires, and a request
    parsed in the same event-loop turn is queued before the collector runs again. Here a
    callback blocks the loop past the 10 ms wait and schedules the second request so that it
    runs after the timer's callback and before the collector.
    """
    backend = RecordingBackend()

    async def scenario() -> list[list[Prediction]]:
        loop = asyncio.get_running_loop()
        batcher = DynamicBatcher(
            backend, max_batch_rows=8, max_wait_seconds=0.01, fair_quantum_rows=2
        )
        batcher.start()
        later: list[asyncio.Future[list[Prediction]]] = []

        def queue_second() -> None:
            later.append(asyncio.ensure_future(batcher.predict([Instance("second", ("a",))])))

        def block_then_queue_second() -> None:
            time.sleep(0.03)  # the wait is over when the loop next looks at its timers
            loop.call_soon(queue_second)

        try:
            first = asyncio.ensure_future(batcher.predict([Instance("first", ("a",))]))
            await asyncio.sleep(0.001)  # the collector holds "first" and waits for more
            loop.call_soon(block_then_queue_second)
            await asyncio.sleep(0.05)
            return list(await asyncio.gather(first, *later))
        finally:
            await batcher.stop()

    answers = asyncio.run(scenario())
    assert [answer[0].sequence for answer in answers] == ["first", "second"]
    assert backend.batches == [["first", "second"]]


def test_an_instance_queued_after_the_wait_starts_the_next_pool() -> None:
    """The other side of the boundary: once the pool has gone, a later request waits for the
    next one."""
    backend = RecordingBackend()
    answers = two_requests_apart(backend, max_batch_rows=8)  # room for both: only time splits
    assert [answer[0].sequence for answer in answers] == ["first", "second"]
    assert backend.batches == [["first"], ["second"]]
