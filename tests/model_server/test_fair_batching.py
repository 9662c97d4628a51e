"""Fair pools: a small request is not stuck behind a large one queued before it.

The backend's forward is scripted (it answers from the text, and its first pool waits on an
event), so the test counts pools, not seconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
import torch

from batchinfer_protocol.zero_shot import Prediction
from model_server.backends.base import Backend, Instance
from model_server.batching import DynamicBatcher, FairQueue, Pending

LABELS_64 = tuple(f"label {index}" for index in range(64))


class GatedBackend(Backend):
    """One row per label; answers each text with scores derived from it; the first pool's
    compute waits until `release` is set, so the test can queue work behind it."""

    backend_name = "gated"

    def __init__(self) -> None:
        super().__init__("gated", torch.device("cpu"))
        self.batches: list[list[str]] = []
        self.prepared_pools = 0
        self.release = threading.Event()

    def load(self) -> None:
        self.loaded = True

    def rows(self, instance: Instance) -> int:
        return len(instance.labels)

    def prepare(self, instances: Sequence[Instance]) -> list[Instance]:
        self.prepared_pools += 1
        return list(instances)

    def compute(self, instances: list[Instance]) -> list[Prediction]:
        if not self.batches and not self.release.wait(timeout=60):
            raise TimeoutError("the test never released the first pool")
        self.batches.append([instance.text for instance in instances])
        return [expected_answer(instance) for instance in instances]


def expected_answer(instance: Instance) -> Prediction:
    """What the scripted model answers: a score per label that depends on text and label."""
    return Prediction(
        sequence=instance.text,
        labels=list(instance.labels),
        scores=[float(len(instance.text) * 100 + i) for i in range(len(instance.labels))],
    )


def big_then_small(quantum_rows: int) -> tuple[GatedBackend, list[Prediction], list[Prediction]]:
    """256 texts × 64 labels queued first; once three of its pools are formed (one computing,
    one prepared, one held by the collector), one text with one label."""
    backend = GatedBackend()
    big = [Instance(f"big {index}", LABELS_64) for index in range(256)]
    small = [Instance("small", ("only",))]

    async def scenario() -> tuple[list[Prediction], list[Prediction]]:
        batcher = DynamicBatcher(
            backend, max_batch_rows=1024, max_wait_seconds=0.0, fair_quantum_rows=quantum_rows
        )
        batcher.start()
        try:
            big_answers = asyncio.ensure_future(batcher.predict(big))
            while backend.prepared_pools < 3:
                await asyncio.sleep(0.001)
            small_answers = asyncio.ensure_future(batcher.predict(small))
            await asyncio.sleep(0)
            backend.release.set()
            return await big_answers, await small_answers
        finally:
            backend.release.set()
            await batcher.stop()

    big_answers, small_answers = asyncio.run(scenario())
    assert big_answers == [expected_answer(instance) for instance in big]
    assert small_answers == [expected_answer(instance) for instance in small]
    return backend, big_answers, small_answers


def pool_of(backend: GatedBackend, text: str) -> int:
    """The 0-based index of the pool (backend compute call) that held `text`."""
    [index] = [number for number, batch in enumerate(backend.batches) if text in batch]
    return index


def test_a_one_text_request_is_answered_within_four_pools_of_a_large_one() -> None:
    backend, _, _ = big_then_small(quantum_rows=64)
    # 16,384 rows of the large request, 1,024 rows a pool: 16 pools in arrival order, and
    # the small request would be in a 17th. Three were formed before it came; it is in the
    # fourth (whose last instance may pass the row limit, as every pool's may).
    assert len(backend.batches) == 16
    assert pool_of(backend, "small") == 3
    # The large request's instances keep their order across pools.
    big_order = [text for batch in backend.batches for text in batch if text != "small"]
    assert big_order == [f"big {index}" for index in range(256)]


def test_arrival_order_would_keep_the_small_request_last() -> None:
    """The same requests with a quantum larger than the whole large request: the round-robin
    degenerates to arrival order, and the small request waits for all 16 pools. This is the
    behaviour the fair queue exists to prevent, and shows the test above can fail."""
    backend, _, _ = big_then_small(quantum_rows=10**9)
    assert pool_of(backend, "small") == 16


def pending(rows: int, name: str) -> Pending:
    loop = asyncio.new_event_loop()
    try:
        return Pending(Instance(name, ("x",) * rows), loop.create_future(), rows)
    finally:
        loop.close()


def drain(queue: FairQueue) -> list[str]:
    order = []
    while not queue.empty():
        order.append(queue.get_nowait().instance.text)
    return order


def test_lines_share_by_rows_not_by_instances() -> None:
    """Quantum 4: a line of 4-row instances gets one per turn, a line of 1-row instances four."""
    queue = FairQueue(quantum_rows=4)
    for index in range(3):
        queue.put_nowait("wide", pending(4, f"w{index}"))
    for index in range(8):
        queue.put_nowait("narrow", pending(1, f"n{index}"))
    assert queue.qsize() == 11
    assert drain(queue) == [
        "w0", "n0", "n1", "n2", "n3", "w1", "n4", "n5", "n6", "n7", "w2",
    ]  # fmt: skip


def test_an_instance_at_the_quantum_goes_in_one_turn_and_one_past_it_too() -> None:
    """At the quantum (4 rows) and one past (5 rows): each still goes in its own turn; the
    instance one past it takes the whole turn, so the other line goes next."""
    queue = FairQueue(quantum_rows=4)
    queue.put_nowait("a", pending(4, "a4"))
    queue.put_nowait("a", pending(5, "a5"))
    queue.put_nowait("a", pending(1, "a1"))
    queue.put_nowait("b", pending(1, "b1"))
    queue.put_nowait("b", pending(1, "b2"))
    assert drain(queue) == ["a4", "b1", "b2", "a5", "a1"]


def test_an_empty_line_forgets_its_credit() -> None:
    """A line that empties leaves the ring; when it comes back it starts from no credit."""
    queue = FairQueue(quantum_rows=4)
    queue.put_nowait("a", pending(1, "a1"))
    assert drain(queue) == ["a1"]
    assert queue.lines == {}
    assert queue.deficits == {}
    assert not queue.ring
    queue.put_nowait("b", pending(1, "b1"))
    queue.put_nowait("b", pending(1, "b2"))
    queue.put_nowait("a", pending(1, "a2"))
    queue.put_nowait("a", pending(1, "a3"))
    assert drain(queue) == ["b1", "b2", "a2", "a3"]


def test_a_quantum_below_one_row_is_refused() -> None:
    with pytest.raises(ValueError, match="quantum_rows must be at least 1, got 0"):
        FairQueue(quantum_rows=0)
    assert FairQueue(quantum_rows=1).quantum_rows == 1
