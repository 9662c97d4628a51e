"""A bounded set of forward-pass tensor shapes, and forward batches filled to a token budget.

Why: in half precision on a GPU, every tensor shape the model has not seen before costs about
100 ms of first-use kernel selection, which a batch padded to its own longest row pays nearly
every time. So sequence lengths are padded up to a fixed list of buckets, and the rows of a
forward batch are cut to a fixed list of counts; every (rows, length) pair the plan can make is
run once at load (`ShapePlan.shapes`), and a shape seen for the first time after that is
counted (`ShapeLedger`), so an operator sees at once if the warm-up missed one.

A CPU pays for a new shape almost nothing: measured on all-MiniLM-L6-v2 in float32 (2 cores,
load 2-4, 12 random shapes of the 117 its plan makes), a shape's first forward took a median
215 ms and its second 168 ms, within the noise, while the process's very first forward took
382 ms against 42 ms for the next. Running all 117 took 41 s of the server's start. So on CPU
the warm-up runs only the plan's two ends (`WARM_UP_ENDS`): the largest shape, which sizes the
allocator's arenas, and the smallest, which is the lone request's; the rest are left to traffic
and are not counted as misses.

Forward batches are filled up to a budget of padded tokens (rows x padded length), as
text-embeddings-inference fills a batch for a padded model (`core/src/queue.rs`: a batch takes
entries while max_length x entries stays within `--max-batch-tokens`): short texts make big
batches and long ones small, so a forward costs about the same whatever the lengths.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Shape = tuple[int, int]
"""(rows, padded sequence length) of one forward pass."""

# After this many buckets the padding step doubles (and doubles again after as many more): a
# row's padding stays below one step, under a quarter of its length past the first 8 steps,
# while a 512-token model still has only 25 buckets to warm.
STEPS_PER_DOUBLING = 8


def length_buckets(pad_to_multiple_of: int, max_length: int) -> tuple[int, ...]:
    """Padded lengths, ascending, the last one `max_length`.

    Multiples of `pad_to_multiple_of` up to 8 of them, then of twice that for 8 more, and so
    on: with 8, a 512-token model gets 8, 16, ... 64, 80, 96, ... 192, 224, ... 448, 512.
    """
    if pad_to_multiple_of < 1 or max_length < 1:
        raise ValueError(
            f"pad_to_multiple_of={pad_to_multiple_of} and max_length={max_length} must be >= 1"
        )
    buckets: list[int] = []
    step, length = pad_to_multiple_of, 0
    while length < max_length:
        for _ in range(STEPS_PER_DOUBLING):
            length += step
            buckets.append(min(length, max_length))
            if length >= max_length:
                break
        step *= 2
    return tuple(buckets)


def row_buckets(max_rows: int) -> tuple[int, ...]:
    """Row counts a forward batch may have: powers of two below `max_rows`, and `max_rows`."""
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    counts = []
    rows = 1
    while rows < max_rows:
        counts.append(rows)
        rows *= 2
    counts.append(max_rows)
    return tuple(counts)


@dataclass(frozen=True)
class ForwardBatch:
    """One forward pass: `indices` of the rows it computes, in the order they are stacked.

    `rows` >= len(indices): when the real rows fall a little short of a row bucket, the last
    row is repeated to fill it (its copies' outputs are dropped), which is cheaper than a
    second, smaller forward pass. `length` is the padded sequence length.
    """

    indices: tuple[int, ...]
    rows: int
    length: int

    @property
    def shape(self) -> Shape:
        return (self.rows, self.length)


@dataclass(frozen=True)
class ShapePlan:
    """Which shapes forward passes may have, and how a set of sequences is cut into them.

    max_rows: rows per forward pass at most (MODEL_MAX_BATCH_SIZE).
    max_tokens: padded tokens (rows x padded length) per forward pass at most
        (MODEL_MAX_BATCH_TOKENS); a single sequence longer than that still runs, alone.
    lengths: the padded-length buckets, ascending; a sequence longer than the last bucket is
        padded to its own length (a shape the warm-up cannot know: the ledger counts it).
    fill_ratio: a tail of rows is padded up to the next row bucket when at least this share of
        it is real rows; else it is cut into smaller buckets.
    """

    max_rows: int
    max_tokens: int
    lengths: tuple[int, ...]
    fill_ratio: float = 0.75
    rows: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.lengths or list(self.lengths) != sorted(set(self.lengths)):
            raise ValueError(f"length buckets must be ascending and distinct, got {self.lengths}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens} must be >= 1")
        object.__setattr__(self, "rows", row_buckets(self.max_rows))

    def padded_length(self, length: int) -> int:
        """The smallest bucket that holds `length` tokens (or `length` past the last one)."""
        position = bisect.bisect_left(self.lengths, length)
        return self.lengths[position] if position < len(self.lengths) else length

    def rows_for(self, padded_length: int) -> int:
        """The most rows a forward pass of this padded length may have (at least 1)."""
        return max(1, min(self.max_rows, self.max_tokens // padded_length))

    def shapes(self) -> list[Shape]:
        """Every shape `plan` can produce for sequences within the last bucket: the warm-up."""
        return [
            (rows, length)
            for length in self.lengths
            for rows in self.rows
            if rows <= self.rows_for(length)
        ]

    def plan(self, lengths: Sequence[int]) -> list[ForwardBatch]:
        """Forward batches for sequences of these token counts, shortest first.

        The sort is stable, so equal lengths keep their order. A batch grows while its rows
        times the padded length of its longest row stay within the budget; then its row count
        is cut to a row bucket (the rest starts the next batch) or padded up to one.
        """
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        batches: list[ForwardBatch] = []
        start = 0
        while start < len(order):
            end = start + 1
            padded = self.padded_length(lengths[order[start]])
            while end < len(order):
                longer = self.padded_length(lengths[order[end]])
                if end + 1 - start > self.rows_for(longer):
                    break
                padded = longer
                end += 1
            count, rows = self.cut(end - start, padded)
            batches.append(ForwardBatch(tuple(order[start : start + count]), rows, padded))
            start += count
        return batches

    def cut(self, count: int, padded_length: int) -> tuple[int, int]:
        """(real rows taken, rows of the forward pass) for `count` rows that fit the budget."""
        allowed = [rows for rows in self.rows if rows <= self.rows_for(padded_length)]
        down = max(rows for rows in allowed if rows <= count)
        if down == count:
            return count, count
        up = min((rows for rows in allowed if rows > count), default=None)
        if up is not None and count >= self.fill_ratio * up:
            return count, up
        return down, down


class ShapeLedger:
    """Shapes the model has run, and a count of those first seen after the warm-up.

    Thread-safe: the warm-up and forwards run in the model's worker thread, readers elsewhere.
    Hooks (the app feeds Prometheus with them; the backends know nothing of it):
    `on_unwarmed(shape)` once per shape first seen after `warmed()`, and
    `on_forward(real_tokens, padded_tokens)` for every forward pass after it.
    """

    def __init__(self) -> None:
        self.on_unwarmed: Callable[[Shape], None] = lambda shape: None
        self.on_forward: Callable[[int, int], None] = lambda real, padded: None
        self.seen: set[Shape] = set()
        self.unwarmed: set[Shape] = set()
        self.is_warm = False
        self.counts_misses = True
        self.warmup_shapes = 0
        self.warmup_seconds = 0.0
        # CUDA graphs captured by the warm-up (MODEL_CUDA_GRAPHS), one per shape at most.
        self.graphs = 0
        self.lock = threading.Lock()

    def record(self, shape: Shape, real_tokens: int) -> None:
        """A forward pass of `shape` ran with `real_tokens` unpadded tokens in it."""
        with self.lock:
            late = self.is_warm
            new = shape not in self.seen
            self.seen.add(shape)
            missed = late and new and self.counts_misses
            if missed:
                self.unwarmed.add(shape)
        if late:
            if missed:
                self.on_unwarmed(shape)
            self.on_forward(real_tokens, shape[0] * shape[1])

    def warmed(self, shapes: int = 0, seconds: float = 0.0, every_shape: bool = True) -> None:
        """The warm-up (of `shapes` shapes, in `seconds`) is over.

        After a warm-up of `every_shape` of the plan (or none at all: a test's server), a new
        shape is a miss and counted; after one of its ends only (CPU), it is not.
        """
        with self.lock:
            self.is_warm = True
            self.counts_misses = every_shape
            self.warmup_shapes = shapes
            self.warmup_seconds = seconds


@dataclass(frozen=True)
class PaddingTokens:
    """What fills the padding: the tokenizer's pad id and side, as `tokenizer.pad` uses them."""

    pad_token_id: int
    padding_side: str = "right"


def pad_batch(
    encodings: Sequence[dict[str, list[int]]],
    batch: ForwardBatch,
    input_names: Sequence[str],
    padding: PaddingTokens,
    zeros: Callable[[Shape], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """int64 arrays of shape (batch.rows, batch.length) for the rows `batch.indices` names.

    `zeros(shape)` allocates a zeroed int64 array (pinned host memory for a CUDA model,
    `runtime.host_zeros`); plain numpy by default.

    attention_mask is 1 on real tokens; input_ids are padded with the pad id, anything else
    (token_type_ids) with 0, as `tokenizer.pad` does. Rows past the real ones repeat the last
    real row, so they are valid inputs whose outputs the caller drops.
    """
    allocate = zeros or (lambda shape: np.zeros(shape, dtype=np.int64))
    arrays = {name: allocate(batch.shape) for name in input_names}
    if "input_ids" in arrays:
        arrays["input_ids"].fill(padding.pad_token_id)
    left = padding.padding_side == "left"
    rows = list(batch.indices) + [batch.indices[-1]] * (batch.rows - len(batch.indices))
    for row, index in enumerate(rows):
        encoding = encodings[index]
        size = len(encoding["input_ids"])
        span = slice(batch.length - size, batch.length) if left else slice(0, size)
        for name, array in arrays.items():
            if name == "attention_mask":
                array[row, span] = 1
            else:
                array[row, span] = encoding[name]
    return arrays


class WarmUpStoppedError(RuntimeError):
    """The server was told to stop before the warm-up was over."""


def stretched(tokens: Sequence[int], length: int) -> list[int]:
    """`tokens` made exactly `length` long: first and last kept, a middle token repeated.

    A real pair's special tokens stay where the model expects them (BART's head reads the last
    <eos>), so a warm-up row is a valid input of any length.
    """
    if length <= 2 or len(tokens) < 3:
        return ([*tokens] * length)[:length]
    middle = tokens[len(tokens) // 2]
    return [tokens[0], *[middle] * (length - 2), tokens[-1]]


WarmUpScope = Literal["all", "ends"]
"""Which shapes the warm-up runs: "all" of the plan's, or its two "ends" (see the module)."""


def warm_up_shapes(plan: ShapePlan, scope: WarmUpScope) -> list[Shape]:
    """The shapes the warm-up runs, largest first (the ends: the largest, then the smallest).

    Largest first, so that a GPU's caching allocator reserves its biggest blocks before
    smaller ones fragment it.
    """
    shapes = sorted(plan.shapes(), key=lambda shape: (shape[0] * shape[1], shape), reverse=True)
    if scope == "all" or len(shapes) <= 2:
        return shapes
    return [shapes[0], shapes[-1]]


def warm_up(
    plan: ShapePlan,
    row: dict[str, list[int]],
    input_names: Sequence[str],
    run: Callable[[dict[str, np.ndarray]], object],
    stop: threading.Event | None = None,
    scope: WarmUpScope = "all",
) -> int:
    """Run the `scope` shapes of the plan once (`warm_up_shapes`); returns how many ran.

    `row` is one real encoding (input_ids and any other per-token input but the attention
    mask), stretched to each bucket's length. `stop`, once set, ends it between two shapes
    with WarmUpStopped (a server told to stop while warming up).
    """
    shapes = warm_up_shapes(plan, scope)
    for rows, length in shapes:
        if stop is not None and stop.is_set():
            raise WarmUpStoppedError("the warm-up was stopped: the server is shutting down")
        inputs = {}
        for name in input_names:
            values = [1] * length if name == "attention_mask" else stretched(row[name], length)
            inputs[name] = np.tile(np.asarray(values, dtype=np.int64), (rows, 1))
        run(inputs)
    return len(shapes)
