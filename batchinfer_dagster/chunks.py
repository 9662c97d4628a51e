"""Splitting work into fixed-size chunks: the one loop every bounded request uses.

Why chunks exist differs by caller, so each caller names its own size next to its reason (bound
parameters per SQL statement, messages per Pub/Sub call, texts per model request); the splitting
itself is written once, here. ``itertools.batched`` would do it from Python 3.12 on; 3.11 is
still supported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items, in order; nothing for no items.

    Raises ``ValueError`` for a ``size`` under 1 (it would never make progress).
    """
    if size < 1:
        raise ValueError(f"chunk size {size} must be at least 1")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def chunk_list(items: Sequence[T], size: int) -> list[list[T]]:
    """``chunked`` as a list, for callers that need the count of chunks first."""
    return list(chunked(items, size))
