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
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from model_server.cuda_graphs import ShapeGraphs
from model_server.shapes import (
    ForwardBatch,
    PaddingTokens,
    Shape,
    ShapeLedger,
    ShapePlan,
    WarmUpScope,
    length_buckets,
    pad_batch,
    warm_up,
)
from model_server.stage_clock import StageClock

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

    Every field is required: ``ServerSettings.forward_options`` fills them, and the settings
    alone declare their defaults and bounds (a copy here once said 32 rows where the server
    runs 64). Tests start from ``ServerSettings.declared().forward_options``.

    max_batch_size: rows per forward pass at most (MODEL_MAX_BATCH_SIZE).
    max_batch_tokens: padded tokens per forward pass at most; 0 picks by device (1,024 on CPU,
        32,768 on CUDA) (MODEL_MAX_BATCH_TOKENS).
    pad_to_multiple_of: padding step of the length buckets; 0 picks by device (4 on CPU, 32 on
        CUDA) (MODEL_PAD_TO_MULTIPLE_OF).
    dtype: "auto" is float16 on a CUDA device and float32 on CPU (MODEL_DTYPE; see
        `resolve_dtype` for why not bfloat16).
    runtime: "torch", or "onnxruntime" (CPU, float32 only) (MODEL_RUNTIME).
    compile: wrap the model in `torch.compile(dynamic=True)` (MODEL_COMPILE; torch only).
    cuda_graphs: capture a CUDA graph of every warmed shape (MODEL_CUDA_GRAPHS; torch runtime
        on a CUDA device, not compiled; elsewhere it changes nothing).
    warm_up: run forward shapes once at load (MODEL_WARMUP); off only for tests.
    warm_up_shapes: which (MODEL_WARMUP_SHAPES): "all" of the plan's, its two "ends", or
        "auto": all on CUDA (where a new shape costs ~100 ms, and CUDA graphs need every
        shape), the ends on CPU (where it costs nothing measurable: see `shapes`).
    cache_dir: where exported ONNX models are kept (MODEL_CACHE_DIR).
    threads: CPU threads for the runtime, 0 for its default (MODEL_TORCH_THREADS).
    """

    max_batch_size: int
    max_batch_tokens: int
    pad_to_multiple_of: int
    dtype: DtypeSetting
    runtime: Runtime
    compile: bool
    cuda_graphs: bool
    warm_up: bool
    warm_up_shapes: Literal["auto", "all", "ends"]
    cache_dir: str
    threads: int

    def shape_graphs(
        self, call: Callable[[dict[str, torch.Tensor]], torch.Tensor], device: torch.device
    ) -> ShapeGraphs | None:
        """The CUDA graphs to capture at warm-up, or None where they do not apply."""
        on_cuda = device.type == "cuda" and self.runtime == "torch"
        if self.cuda_graphs and on_cuda and not self.compile:
            return ShapeGraphs(call, device)
        return None

    def warm_up_scope(self, device: torch.device) -> WarmUpScope:
        """The shapes to warm on this device ("auto" resolved)."""
        if self.warm_up_shapes != "auto":
            return self.warm_up_shapes
        return "all" if device.type == "cuda" else "ends"

    def shape_plan(self, device: torch.device, max_length: int) -> ShapePlan:
        """The buckets of a model whose sequences hold at most `max_length` tokens."""
        step = self.pad_to_multiple_of or PAD_TO_MULTIPLE_OF.get(device.type, 4)
        return ShapePlan(
            max_rows=self.max_batch_size,
            max_tokens=self.max_batch_tokens or MAX_BATCH_TOKENS.get(device.type, 1024),
            lengths=length_buckets(step, max_length),
        )


class Forward(Protocol):
    """One forward pass: padded int64 host arrays in, float32 outputs (rows first) out, on
    the model's device (a CUDA tensor is not waited for)."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> torch.Tensor: ...


def resolve_dtype(setting: DtypeSetting, device: torch.device, runtime: Runtime) -> torch.dtype:
    """The dtype MODEL_DTYPE asks for on this device; half precision only on CUDA.

    "auto" is float16 on CUDA, chosen by agreement with the float32 pipeline rather than by
    speed: on an H200 (bench_gpu's bart-large-mnli-sized BART, 200 texts x 4 labels, against
    the fp32 pipeline, measured 2026-12-04) float16 kept the top label on 99 % of
    the texts (max |score difference| 0.0071), bfloat16 on 88 % (0.065), for 813 against 936
    texts/s. bfloat16 keeps 8 bits of mantissa where float16 keeps 11; both have the tensor
    cores' rate, and the goal (same top label on >= 99 %, |difference| <= 0.01) only float16
    meets. BART-large and BERT activations stay well inside float16's range in inference.

    On CPU, half precision is slower than float32 without AMX and is never within the
    pipeline's float32 scores, so it is refused rather than silently used.
    """
    if setting == "auto":
        if device.type == "cuda" and runtime == "torch":
            return torch.float16
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


def compiled(module: torch.nn.Module, options: ForwardOptions) -> Callable[..., Any]:
    """The module, or with `options.compile` the module under `torch.compile(dynamic=True)`:
    one graph for every shape (bar dynamo's specialisation of 1-row batches), compiled during
    the warm-up."""
    return torch.compile(module, dynamic=True) if options.compile else module


def torch_forward(
    call: Callable[[dict[str, torch.Tensor]], torch.Tensor], device: torch.device
) -> Forward:
    """A PyTorch forward: arrays to the device without waiting, `call`, float32 out, left there.

    The arrays are copied with `non_blocking=True`: from pinned memory (`host_zeros` on CUDA)
    the copy is queued behind the previous forward instead of holding the host until the GPU
    is idle. The result stays on the device; `gather_rows` copies a pool's results back once.
    """

    def forward(inputs: dict[str, np.ndarray]) -> torch.Tensor:
        tensors = {
            name: torch.from_numpy(array).to(device, non_blocking=True)
            for name, array in inputs.items()
        }
        with torch.inference_mode():
            return call(tensors).float()

    return forward


def host_zeros(device: torch.device) -> Callable[[Shape], np.ndarray]:
    """Zeroed int64 host arrays for padded batches: page-locked (pinned) when the model runs
    on CUDA, so that copies to the device are asynchronous DMA; plain numpy on CPU."""
    if device.type != "cuda":
        return lambda shape: np.zeros(shape, dtype=np.int64)
    return lambda shape: torch.zeros(shape, dtype=torch.int64, pin_memory=True).numpy()


def gather_rows(count: int, parts: Sequence[tuple[Sequence[int], torch.Tensor]]) -> np.ndarray:
    """(count, width) float32 on the host: each part's rows at its indices.

    The parts (results of a pool's forward batches, in the order they ran) are joined where
    they are and copied to the host in one transfer: one device synchronisation per pool
    rather than one per forward batch, so the GPU runs batch after batch while the host
    queues the next.
    """
    if not parts:
        raise ValueError("gather_rows needs at least one part")
    joined = torch.cat([rows for _, rows in parts]).cpu().numpy()
    order = np.fromiter(
        (index for indices, _ in parts for index in indices), dtype=np.int64, count=len(joined)
    )
    result = np.empty((count, joined.shape[1]), dtype=np.float32)
    result[order] = joined
    return result


class DeviceClock:
    """How long the device was busy with forward batches, in seconds.

    On CUDA each forward batch is bracketed by two CUDA events, read once the pool's results
    have been copied back (they are complete then, so reading them does not wait): the span
    of the stream from the batch's first kernel to its last, launch gaps inside a batch
    included, gaps between batches not. On CPU the forward is the device: the wall-clock time
    of the forward call.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.started = 0.0

    def start(self) -> None:
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            self.pending.append((begin, None))
        else:
            self.started = time.perf_counter()

    def stop(self) -> float:
        """Seconds of this batch on CPU; 0 on CUDA, whose spans `settle` adds up later."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending[-1] = (self.pending[-1][0], end)
            return 0.0
        return time.perf_counter() - self.started

    def settle(self) -> float:
        """Seconds of the CUDA spans recorded since the last call (after the pool's copy)."""
        spans, self.pending = self.pending, []
        return sum(begin.elapsed_time(end) for begin, end in spans if end is not None) / 1000


@dataclass
class BucketedForward:
    """A forward pass over bounded shapes: cuts encodings into planned batches, pads them,
    runs them, records each shape in the ledger, and warms every shape up.

    encodings: per sequence, its token lists by input name (input_ids, token_type_ids...),
        without attention_mask, which padding makes.
    graphs: CUDA graphs of the forward, captured at the warm-up (MODEL_CUDA_GRAPHS on a
        CUDA device); None runs every shape eagerly.
    """

    forward: Forward
    plan: ShapePlan
    ledger: ShapeLedger
    input_names: list[str]
    padding: PaddingTokens
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    graphs: ShapeGraphs | None = None
    stages: StageClock = field(default_factory=StageClock)
    device_clock: DeviceClock = field(init=False)

    def __post_init__(self) -> None:
        self.device_clock = DeviceClock(self.device)
        self.host_zeros = host_zeros(self.device)

    def batches(
        self, encodings: Sequence[dict[str, list[int]]]
    ) -> list[tuple[ForwardBatch, dict[str, np.ndarray]]]:
        """The planned forward batches of these encodings, padded to their shapes."""
        lengths = [len(encoding["input_ids"]) for encoding in encodings]
        return [
            (batch, pad_batch(encodings, batch, self.input_names, self.padding, self.host_zeros))
            for batch in self.plan.plan(lengths)
        ]

    def one(
        self, encodings: Sequence[dict[str, list[int]]], index: int
    ) -> tuple[ForwardBatch, dict[str, np.ndarray]]:
        """Sequence `index` alone, as a one-row batch of its bucket."""
        length = self.plan.padded_length(len(encodings[index]["input_ids"]))
        batch = ForwardBatch((index,), 1, length)
        return batch, pad_batch(encodings, batch, self.input_names, self.padding, self.host_zeros)

    def run(self, batch: ForwardBatch, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        """Outputs of the batch's real rows (rows repeated to fill a row bucket dropped), on
        the device; nothing here waits for the device."""
        mask = inputs.get("attention_mask")
        real = len(batch.indices)
        real_tokens = int(mask[:real].sum()) if mask is not None else real * batch.length
        self.ledger.record(batch.shape, real_tokens)
        forward = self.graphs or self.forward
        self.device_clock.start()
        outputs = forward(inputs)[:real]
        self.stages.device_busy(self.device_clock.stop())
        return outputs

    def gather(self, count: int, parts: Sequence[tuple[Sequence[int], torch.Tensor]]) -> np.ndarray:
        """`gather_rows` of a pool's results, then the device's busy time of the pool."""
        rows = gather_rows(count, parts)
        self.stages.device_busy(self.device_clock.settle())
        return rows

    def warm_up(
        self,
        row: dict[str, list[int]],
        stop: threading.Event | None = None,
        scope: WarmUpScope = "all",
    ) -> None:
        """Run the `scope` shapes of the plan once (see `shapes.warm_up`), capturing each one's
        CUDA graph when `graphs` is set, then mark the ledger warm."""
        started = time.perf_counter()
        if self.graphs is not None:
            scope = "all"  # a shape without its graph would run eagerly

        def run(inputs: dict[str, np.ndarray]) -> None:
            rows, length = inputs["input_ids"].shape
            self.ledger.record((rows, length), rows * length)
            if self.graphs is not None:
                self.graphs.capture(inputs)
            else:
                self.forward(inputs)

        count = warm_up(self.plan, row, self.input_names, run, stop, scope)
        if self.graphs is not None:
            self.ledger.graphs = len(self.graphs.captured)
        self.ledger.warmed(count, time.perf_counter() - started, every_shape=scope == "all")
