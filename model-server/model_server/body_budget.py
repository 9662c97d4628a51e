"""One budget of request-body bytes for the whole server, shared by every connection.

Each request is bounded on its own (MODEL_MAX_BODY_BYTES, 10 MiB by default), but a thousand
connections each sending a body slowly (within MODEL_BODY_TIMEOUT_SECONDS) would have the server
buffer gigabytes at once. The budget bounds the sum: a request holds bytes of it from its first
body byte until its body is parsed, at once for the whole of a declared Content-Length (so a body
that cannot fit is refused before a byte of it is read) and as they arrive for a chunked body.
A request that does not fit is answered 429 with Retry-After, as text-embeddings-inference
answers a full queue ("Model is overloaded", 429), and the client retries it; nothing is
buffered for it. The budget is kept on the event loop's thread only, so it needs no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from batchinfer_protocol.predict_request import RequestError

# What a refused client is told to wait: bodies are held for at most the body deadline, but most
# are parsed within a second of arriving; the client's own retry backoff adds to this.
RETRY_AFTER_SECONDS = 1


class BodyBudgetFullError(RequestError):
    """The body does not fit in what the server's budget has left: retry after a while."""

    def __init__(self, wanted: int, held: int, limit: int) -> None:
        super().__init__(
            429,
            f"the server holds {held} bytes of request bodies and this one needs {wanted} more; "
            f"the budget is {limit} (MODEL_BODY_BUDGET_BYTES): retry after "
            f"{RETRY_AFTER_SECONDS} s",
        )
        self.retry_after_seconds = RETRY_AFTER_SECONDS


class BodyHold:
    """The bytes of the budget one request holds; grows with `cover`, given back on exit."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def cover(self, total_bytes: int) -> None:
        """Hold at least `total_bytes` (the declared length, or the bytes read so far); raise
        `BodyBudgetFullError` if the budget cannot give the difference, holding nothing more."""
        extra = total_bytes - self.bytes
        if extra > 0:
            self.budget.take(extra)
            self.bytes = total_bytes


class BodyBudget:
    """At most `limit_bytes` of request bodies held at once, across all connections."""

    def __init__(self, limit_bytes: int, on_change: Callable[[int], None]) -> None:
        """`on_change` is told the bytes held after each change (the server's gauge)."""
        if limit_bytes < 1:
            raise ValueError(f"a body budget must be at least 1 byte, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.on_change = on_change

    def take(self, size: int) -> None:
        """Hold `size` more bytes; up to the limit itself, one byte past it is refused."""
        if self.held_bytes + size > self.limit_bytes:
            raise BodyBudgetFullError(size, self.held_bytes, self.limit_bytes)
        self.held_bytes += size
        self.on_change(self.held_bytes)

    def give_back(self, size: int) -> None:
        self.held_bytes -= size
        self.on_change(self.held_bytes)

    @contextlib.contextmanager
    def hold(self) -> Iterator[BodyHold]:
        """A request's hold, given back whatever happens (refusal, disconnect, timeout)."""
        hold = BodyHold(self)
        try:
            yield hold
        finally:
            self.give_back(hold.bytes)
