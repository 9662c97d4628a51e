"""The shape plan: length buckets, row buckets, the token budget, and the padded arrays."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model_server.shapes import (
    ForwardBatch,
    PaddingTokens,
    ShapeLedger,
    ShapePlan,
    length_buckets,
    pad_batch,
    row_buckets,
    stretched,
)


def test_length_buckets_double_their_step_every_eight() -> None:
    assert length_buckets(8, 512) == (
        *range(8, 65, 8),
        *range(80, 193, 16),
        *range(224, 449, 32),
        512,
    )
    assert length_buckets(32, 512) == (*range(32, 257, 32), *range(320, 513, 64))


def test_the_last_length_bucket_is_the_model_limit() -> None:
    assert length_buckets(8, 20) == (8, 16, 20)
    assert length_buckets(8, 16) == (8, 16)


def test_row_buckets_are_powers_of_two_and_the_limit() -> None:
    assert row_buckets(1) == (1,)
    assert row_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert row_buckets(48) == (1, 2, 4, 8, 16, 32, 48)


def plan(max_rows: int = 32, max_tokens: int = 512) -> ShapePlan:
    return ShapePlan(max_rows=max_rows, max_tokens=max_tokens, lengths=length_buckets(8, 128))


def test_padded_length_is_the_smallest_bucket_that_holds_it() -> None:
    shapes = plan()
    assert [shapes.padded_length(n) for n in (1, 8, 9, 64, 65, 80, 81, 128)] == [
        8,
        8,
        16,
        64,
        80,
        80,
        96,
        128,
    ]
    assert shapes.padded_length(129) == 129  # past the last bucket: its own length


def test_a_batch_fills_the_token_budget_at_its_boundary() -> None:
    shapes = plan(max_rows=64, max_tokens=512)
    # 16 tokens: 32 rows make exactly 512 padded tokens; the 33rd starts a new batch.
    [full] = shapes.plan([16] * 32)
    assert full.shape == (32, 16)
    first, second = shapes.plan([16] * 33)
    assert (first.shape, second.shape) == ((32, 16), (1, 16))
    # Longer rows make smaller batches: 64 tokens allow 8 rows.
    assert [batch.shape for batch in shapes.plan([60] * 16)] == [(8, 64), (8, 64)]


def test_the_row_limit_binds_before_the_budget_for_short_rows() -> None:
    shapes = plan(max_rows=4, max_tokens=10_000)
    assert [batch.shape for batch in shapes.plan([5] * 9)] == [(4, 8), (4, 8), (1, 8)]


def test_a_tail_close_to_a_row_bucket_is_padded_up_else_cut_down() -> None:
    shapes = plan(max_rows=32, max_tokens=10_000)
    [seven] = shapes.plan([10] * 7)  # 7 >= 0.75 * 8: one pass of 8 rows, the last repeated
    assert (seven.rows, len(seven.indices)) == (8, 7)
    five = shapes.plan([10] * 5)  # 5 < 0.75 * 8: 4 + 1
    assert [(batch.rows, len(batch.indices)) for batch in five] == [(4, 4), (1, 1)]


def test_a_sequence_longer_than_the_budget_still_runs_alone() -> None:
    [alone] = plan(max_tokens=50).plan([100])
    assert alone.shape == (1, 112)


@pytest.mark.parametrize("seed", range(20))
def test_every_plan_covers_each_row_once_within_the_warm_shapes(seed: int) -> None:
    rng = random.Random(seed)
    shapes = ShapePlan(
        max_rows=rng.choice([1, 7, 32, 64]),
        max_tokens=rng.choice([64, 500, 2048]),
        lengths=length_buckets(rng.choice([4, 8, 32]), 128),
    )
    lengths = [rng.randint(1, 128) for _ in range(rng.randint(1, 300))]
    batches = shapes.plan(lengths)
    warm = set(shapes.shapes())
    covered = [index for batch in batches for index in batch.indices]
    assert sorted(covered) == list(range(len(lengths)))
    for batch in batches:
        assert batch.shape in warm
        assert len(batch.indices) <= batch.rows
        assert all(lengths[index] <= batch.length for index in batch.indices)
        assert batch.rows * batch.length <= max(shapes.max_tokens, batch.length)


def test_warm_shapes_respect_both_limits() -> None:
    shapes = ShapePlan(max_rows=8, max_tokens=64, lengths=(8, 16, 32, 64))
    assert shapes.shapes() == [
        (1, 8),
        (2, 8),
        (4, 8),
        (8, 8),
        (1, 16),
        (2, 16),
        (4, 16),
        (1, 32),
        (2, 32),
        (1, 64),
    ]


def test_pad_batch_pads_right_and_repeats_the_last_row() -> None:
    encodings = [
        {"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0]},
        {"input_ids": [101, 8, 9, 102, 5, 102], "token_type_ids": [0, 0, 0, 0, 1, 1]},
    ]
    batch = ForwardBatch(indices=(1, 0), rows=3, length=8)
    names = ["input_ids", "token_type_ids", "attention_mask"]
    arrays = pad_batch(encodings, batch, names, PaddingTokens(pad_token_id=0))
    assert arrays["input_ids"].tolist() == [
        [101, 8, 9, 102, 5, 102, 0, 0],
        [101, 7, 102, 0, 0, 0, 0, 0],
        [101, 7, 102, 0, 0, 0, 0, 0],
    ]
    assert arrays["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert arrays["attention_mask"].sum(axis=1).tolist() == [6, 3, 3]
    assert all(array.dtype == np.int64 for array in arrays.values())


def test_pad_batch_pads_left_when_the_tokenizer_does() -> None:
    batch = ForwardBatch(indices=(0,), rows=1, length=5)
    arrays = pad_batch(
        [{"input_ids": [3, 4]}], batch, ["input_ids", "attention_mask"], PaddingTokens(1, "left")
    )
    assert arrays["input_ids"].tolist() == [[1, 1, 1, 3, 4]]
    assert arrays["attention_mask"].tolist() == [[0, 0, 0, 1, 1]]


def test_stretched_rows_keep_their_special_tokens() -> None:
    assert stretched([101, 7, 8, 102], 6) == [101, 8, 8, 8, 8, 102]
    assert stretched([101, 7, 8, 102], 2) == [101, 7]


def test_the_ledger_counts_only_shapes_new_after_the_warm_up() -> None:
    ledger = ShapeLedger()
    misses: list[tuple[int, int]] = []
    forwards: list[tuple[int, int]] = []
    ledger.on_unwarmed = misses.append
    ledger.on_forward = lambda real, padded: forwards.append((real, padded))
    ledger.record((4, 16), 64)
    ledger.warmed(shapes=1, seconds=0.5)
    ledger.record((4, 16), 50)
    ledger.record((2, 16), 20)
    ledger.record((2, 16), 30)
    assert misses == [(2, 16)]
    assert ledger.unwarmed == {(2, 16)}
    assert forwards == [(50, 64), (20, 32), (30, 32)]
