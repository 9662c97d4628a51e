"""The one chunking loop: sizes at, under and one past a multiple; a size that cannot progress."""

from __future__ import annotations

import pytest

from batchinfer_dagster.chunks import chunk_list, chunked


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [(0, 3, []), (2, 3, [2]), (3, 3, [3]), (4, 3, [3, 1]), (6, 3, [3, 3]), (7, 3, [3, 3, 1])],
)
def test_chunks_keep_order_and_sizes(count: int, size: int, sizes: list[int]) -> None:
    items = list(range(count))
    chunks = chunk_list(items, size)
    assert [len(chunk) for chunk in chunks] == sizes
    assert [item for chunk in chunks for item in chunk] == items


def test_chunked_reads_an_iterator_lazily() -> None:
    consumed: list[int] = []

    def numbers() -> object:
        for number in range(10):
            consumed.append(number)
            yield number

    first = next(chunked(numbers(), 4))
    assert first == [0, 1, 2, 3]
    assert consumed == [0, 1, 2, 3]


def test_a_size_under_one_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk size 0 must be at least 1"):
        next(chunked([1], 0))
