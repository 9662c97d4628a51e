"""What runs a backend's forward pass, and how: runtime, dtype, compilation, batch shapes.

Two runtimes compute the same thing on padded int64 arrays: PyTorch (any device, any dtype,
optionally `torch.compile`d) and ONNX Runtime on CPU (the model exported once, at first load,
and cached). Both take `{input name: (rows, length) int64 array}` and return float32 arrays,
so a backend's batching, warm-up and metrics do not care which one runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from model_server.shapes import (
    ForwardBatch,
    PaddingTokens,
    ShapeLedger,
    ShapePlan,
    length_buckets,
    pad_batch,
    warm_up,
)

Runtime = Literal["torch", "onnxruntime"]
DtypeSetting = Literal["auto", "float32", "bfloat16", "float16"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Half precision on a GPU picks kernels per shape (~100 ms the first time), so GPU buckets are
# coarse; on a CPU a new shape costs nothing and padding costs compute, so they are fine.
PAD_TO_MULTIPLE_OF = {"cuda": 32, "cpu": 4}
# A GPU needs large batches to fill. A CPU's matrix products are as efficient at a thousand
# tokens as at four, while a small budget keeps a batch to rows of close lengths: on 400
# support-message pairs, 1,024 tokens and steps of 4 pad 13 % of the tokens where 4,096 and
# steps of 8 padded 22 % (a batch of 64 rows spanned several length buckets).
MAX_BATCH_TOKENS = {"cuda": 32768, "cpu": 1024}


@dataclass(frozen=True)
class ForwardOptions:
    """How a backend runs its forward passes (the MODEL_* settings of that name).

    max_batch_size: rows per forward pass at most (MODEL_MAX_BATCH_SIZE).
    max_batch_tokens: padded tokens per forward pass at most; 0 picks by device (1,024 on CPU,
        32,768 on CUDA) (MODEL_MAX_BATCH_TOKENS).
    pad_to_multiple_of: padding step of the length buckets; 0 picks by device (4 on CPU, 32 on
        CUDA) (MODEL_PAD_TO_MULTIPLE_OF).
    dtype: "auto" is bfloat16 on a CUDA device that supports it, else float16 there, and
        float32 on CPU (MODEL_DTYPE).
    runtime: "torch", or "onnxruntime" (CPU, float32 only) (MODEL_RUNTIME).
    compile: wrap the model in `torch.compile(dynamic=True)` (MODEL_COMPILE; torch only).
    warm_up: run every forward shape once at load (MODEL_WARMUP); off only for tests.
    cache_dir: where exported ONNX models are kept (MODEL_CACHE_DIR).
    threads: CPU threads for the runtime, 0 for its default (MODEL_TORCH_THREADS).
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 0
    pad_to_multiple_of: int = 0
    dtype: DtypeSetting = "auto"
    runtime: Runtime = "torch"
    compile: bool = False
    warm_up: bool = True
    cache_dir: str = "/tmp/model_server_cache"
    threads: int = 0

    def shape_plan(self, device: torch.device, max_length: int) -> ShapePlan:
        """The buckets of a model whose sequences hold at most `max_length` tokens."""
        step = self.pad_to_multiple_of or PAD_TO_MULTIPLE_OF.get(device.type, 4)
        return ShapePlan(
            max_rows=self.max_batch_size,
            max_tokens=self.max_batch_tokens or MAX_BATCH_TOKENS.get(device.type, 1024),
            lengths=length_buckets(step, max_length),
        )


class Forward(Protocol):
    """One forward pass: padded int64 inputs in, float32 outputs (rows first) out."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def resolve_dtype(setting: DtypeSetting, device: torch.device, runtime: Runtime) -> torch.dtype:
    """The dtype MODEL_DTYPE asks for on this device; half precision only on CUDA.

    On CPU, half precision is slower than float32 without AMX and is never within the
    pipeline's float32 scores, so it is refused rather than silently used.
    """
    if setting == "auto":
        if device.type == "cuda" and runtime == "torch":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = DTYPES[setting]
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(
            f"MODEL_DTYPE={setting} needs a CUDA device, got {device}; use auto or float32"
        )
    if dtype != torch.float32 and runtime == "onnxruntime":
        raise ValueError(
            f"MODEL_RUNTIME=onnxruntime runs float32 only; unset MODEL_DTYPE={setting}"
        )
    return dtype


def model_max_length(tokenizer_max: int | None, position_embeddings: int | None) -> int:
    """The longest sequence the model takes: the tokenizer's limit, else the model's positions.

    Tokenizers without a limit report a huge sentinel (about 1e30); the position embeddings
    are then what bounds a sequence.
    """
    candidates = [n for n in (tokenizer_max, position_embeddings) if n and n < 1_000_000]
    if not candidates:
        raise ValueError(
            "neither the tokenizer (model_max_length) nor the model config "
            "(max_position_embeddings) says how long a sequence may be; set model_max_length "
            "in tokenizer_config.json"
        )
    return min(candidates)


def torch_forward(
    model: torch.nn.Module,
    device: torch.device,
    options: ForwardOptions,
    output: Callable[[object, dict[str, torch.Tensor]], torch.Tensor],
    extra_kwargs: dict[str, bool] | None = None,
) -> Forward:
    """A PyTorch forward: arrays to the device, the model, `output` picks the result (float32).

    With `options.compile`, the model runs through `torch.compile(dynamic=True)`: one graph for
    every shape (bar dynamo's specialisation of 1-row batches), compiled during the warm-up.
    """
    runner: Callable[..., object] = model
    if options.compile:
        runner = torch.compile(model, dynamic=True)
    kwargs = extra_kwargs or {}

    def forward(inputs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {
            name: torch.from_numpy(array).to(device, non_blocking=True)
            for name, array in inputs.items()
        }
        with torch.inference_mode():
            result = output(runner(**tensors, **kwargs), tensors)
            return result.float().cpu().numpy()

    return forward


@dataclass
class BucketedForward:
    """A forward pass over bounded shapes: cuts encodings into planned batches, pads them,
    runs them, records each shape in the ledger, and warms every shape up.

    encodings: per sequence, its token lists by input name (input_ids, token_type_ids...),
        without attention_mask, which padding makes.
    """

    forward: Forward
    plan: ShapePlan
    ledger: ShapeLedger
    input_names: list[str]
    padding: PaddingTokens

    def batches(
        self, encodings: Sequence[dict[str, list[int]]]
    ) -> list[tuple[ForwardBatch, dict[str, np.ndarray]]]:
        """The planned forward batches of these encodings, padded to their shapes."""
        lengths = [len(encoding["input_ids"]) for encoding in encodings]
        return [
            (batch, pad_batch(encodings, batch, self.input_names, self.padding))
            for batch in self.plan.plan(lengths)
        ]

    def one(
        self, encodings: Sequence[dict[str, list[int]]], index: int
    ) -> tuple[ForwardBatch, dict[str, np.ndarray]]:
        """Sequence `index` alone, as a one-row batch of its bucket."""
        length = self.plan.padded_length(len(encodings[index]["input_ids"]))
        batch = ForwardBatch((index,), 1, length)
        return batch, pad_batch(encodings, batch, self.input_names, self.padding)

    def run(self, batch: ForwardBatch, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Outputs of the batch's real rows (rows repeated to fill a row bucket dropped)."""
        mask = inputs.get("attention_mask")
        real = len(batch.indices)
        real_tokens = int(mask[:real].sum()) if mask is not None else real * batch.length
        self.ledger.record(batch.shape, real_tokens)
        return self.forward(inputs)[:real]

    def warm_up(self, row: dict[str, list[int]], stop: threading.Event | None = None) -> None:
        """Run every shape of the plan once (see `shapes.warm_up`), then mark the ledger warm."""
        started = time.perf_counter()

        def run(inputs: dict[str, np.ndarray]) -> None:
            rows, length = inputs["input_ids"].shape
            self.ledger.record((rows, length), rows * length)
            self.forward(inputs)

        count = warm_up(self.plan, row, self.input_names, run, stop)
        self.ledger.warmed(count, time.perf_counter() - started)
