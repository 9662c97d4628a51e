"""CUDA graphs of the forward pass, one per shape of the bounded plan, captured at warm-up.

A forward of a 400 M-parameter encoder-decoder launches about a thousand kernels; the host
launches them one by one from Python, holding the GIL that the tokenizer thread also needs,
and transformers' eager code reads device values on the host a few times per forward
(`padding_mask.all()` when it builds the attention mask, BART's check that every row holds as
many <eos>), each a wait for the GPU to finish everything queued before. A CUDA graph replays
the whole forward with one launch and no host reads (transformers skips those reads while a
stream is capturing: `is_tracing` in utils/import_utils.py). Shapes are bounded
(`shapes.ShapePlan`), so one graph per warmed shape covers every forward the server runs;
the warm-up captures them largest first, in one shared memory pool (as vLLM captures its
batch sizes): graphs run one at a time on one stream, so their temporaries may share memory,
while each graph's inputs and output stay its own.

Replaying a graph copies the batch into the graph's input tensors and returns a copy of its
output (the next replay overwrites it). A shape no graph covers (a sequence past the last
length bucket), or whose capture failed, runs eagerly. On CPU nothing is captured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_server.shapes import Shape

logger = logging.getLogger(__name__)

# Eager runs before a capture: the first picks kernels and fills caches (cuBLAS workspaces,
# autotuning), which must not happen inside the capture.
RUNS_BEFORE_CAPTURE = 2


@dataclass
class CapturedForward:
    """One graph and the tensors it reads and writes."""

    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


class ShapeGraphs:
    """A Forward that replays the captured graph of a batch's shape, else runs `eager`.

    eager: the forward on device tensors (input name -> (rows, length) int64), float32 out.
    """

    def __init__(
        self, eager: Callable[[dict[str, torch.Tensor]], torch.Tensor], device: torch.device
    ) -> None:
        self.eager = eager
        self.device = device
        self.captured: dict[Shape, CapturedForward] = {}
        self.failed: dict[Shape, str] = {}
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None

    @property
    def enabled(self) -> bool:
        """Whether graphs can be captured here: only on a CUDA device."""
        return self.device.type == "cuda"

    def to_device(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {
            name: torch.from_numpy(array).to(self.device, non_blocking=True)
            for name, array in inputs.items()
        }

    def run_eager(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.eager(tensors).float()

    def capture(self, inputs: dict[str, np.ndarray]) -> None:
        """Run this shape once; on CUDA also capture its graph (a failure leaves it eager)."""
        tensors = self.to_device(inputs)
        if not self.enabled:
            self.run_eager(tensors)
            return
        shape: Shape = tuple(inputs["input_ids"].shape)  # type: ignore[assignment]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(RUNS_BEFORE_CAPTURE):
                self.run_eager(tensors)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
                output = self.eager(tensors).float()
        except Exception as error:  # the shape stays eager; the count says so
            self.failed[shape] = f"{type(error).__name__}: {error}"
            logger.warning("no CUDA graph for shape %s (it runs eagerly): %s", shape, error)
            torch.cuda.synchronize(self.device)
            return
        self.captured[shape] = CapturedForward(graph, tensors, output)

    def __call__(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        captured = self.captured.get(tuple(inputs["input_ids"].shape))  # type: ignore[arg-type]
        if captured is None:
            return self.run_eager(self.to_device(inputs))
        for name, target in captured.inputs.items():
            target.copy_(torch.from_numpy(inputs[name]), non_blocking=True)
        captured.graph.replay()
        return captured.output.clone()
