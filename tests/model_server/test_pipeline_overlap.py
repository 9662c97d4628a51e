"""The server's stages overlap: the next pool is tokenized while the model computes this one.

A GPU forward costs the host little CPU, so whatever the host does between two forward
batches is time the GPU waits. Here the real nli backend (tiny BERT, real tokenizer, real
batcher) runs with a forward of fixed cost (a sleep per forward batch, as a GPU's forward
holds no CPU) and a tokenizer stage made as slow (a sleep per pool): overlapped, the wall
clock is about the sum of the forwards plus one pool's preparation; run one after the other
it would be the sum of both. The intervals of each stage come from their own timestamps, so
the test also counts the pools whose preparation ran while the previous pool computed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from batchinfer_protocol.zero_shot import Prediction
from batchinfer_testing.backends import DEFAULT_TEMPLATE, forward_options
from model_server.backends.base import Instance
from model_server.backends.nli import NliBackend, PreparedPairs
from model_server.batching import DynamicBatcher
from model_server.cuda_graphs import ShapeGraphs
from model_server.runtime import Forward

FORWARD_SECONDS = 0.1  # one forward batch per pool here
PREPARE_SECONDS = 0.05
POOLS = 8
POOL_ROWS = 8  # 2 texts x 4 labels per pool
LABELS = ("mobile", "website", "billing", "account access")


class FixedCostNliBackend(NliBackend):
    """The nli backend with a forward of fixed cost and a slow tokenizer stage, which record
    when each of them ran."""

    def __init__(self, model_dir: Path) -> None:
        options = forward_options(max_batch_size=8, max_batch_tokens=4096, warm_up=False)
        super().__init__(
            str(model_dir), torch.device("cpu"), forward=options, default_template=DEFAULT_TEMPLATE
        )
        self.forwards: list[tuple[float, float]] = []
        self.prepares: list[tuple[float, float]] = []
        self.computes: list[tuple[float, float]] = []

    def load_forward(self) -> tuple[Forward, ShapeGraphs | None]:
        forward, graphs = super().load_forward()

        def fixed_cost(inputs: dict[str, np.ndarray]) -> torch.Tensor:
            started = time.perf_counter()
            time.sleep(FORWARD_SECONDS)
            result = forward(inputs)
            self.forwards.append((started, time.perf_counter()))
            return result

        return fixed_cost, graphs

    def prepare(self, instances: Sequence[Instance]) -> PreparedPairs:
        started = time.perf_counter()
        time.sleep(PREPARE_SECONDS)
        prepared = super().prepare(instances)
        self.prepares.append((started, time.perf_counter()))
        return prepared

    def compute(self, prepared: PreparedPairs) -> list[Prediction]:
        started = time.perf_counter()
        predictions = super().compute(prepared)
        self.computes.append((started, time.perf_counter()))
        return predictions


async def predict_all(backend: FixedCostNliBackend, texts: list[str]) -> list[Prediction]:
    batcher = DynamicBatcher(
        backend, max_batch_rows=POOL_ROWS, max_wait_seconds=0.0, fair_quantum_rows=2
    )
    batcher.start()
    try:
        return await batcher.predict([Instance(text, LABELS) for text in texts])
    finally:
        await batcher.stop()


def test_tokenizing_the_next_pool_overlaps_the_forward(bert_nli_dir: Path) -> None:
    backend = FixedCostNliBackend(bert_nli_dir)
    backend.load()
    texts = [f"my app crashes when I pay invoice {i}" for i in range(2 * POOLS)]
    started = time.perf_counter()
    predictions = asyncio.run(predict_all(backend, texts))
    wall = time.perf_counter() - started

    assert [p.sequence for p in predictions] == texts
    assert len(backend.prepares) == len(backend.computes) == POOLS
    forward_sum = sum(end - begin for begin, end in backend.forwards)
    prepare_sum = sum(end - begin for begin, end in backend.prepares)
    assert len(backend.forwards) >= POOLS
    assert forward_sum >= POOLS * FORWARD_SECONDS
    # Each pool after the first two was prepared while an earlier pool computed.
    overlapped = sum(backend.prepares[k][0] < backend.computes[k - 1][1] for k in range(1, POOLS))
    assert overlapped >= POOLS - 2, (backend.prepares, backend.computes)
    # One after the other, wall >= forward_sum + prepare_sum (each stage's sleeps are inside
    # its own intervals). Overlapped: the forwards (the slower stage) plus the first pool's
    # preparation. Generous for a loaded machine: a quarter of the preparations hidden.
    bound = forward_sum + 0.75 * prepare_sum
    assert forward_sum <= wall < bound, (wall, forward_sum, prepare_sum)
