"""Dynamic batching: instances of concurrent requests share model batches.

Each request puts its instances on one asyncio queue and awaits one future per instance. A
collector task takes instances off the queue until they fill MODEL_BATCH_POOL_ROWS model rows
or MODEL_BATCH_WAIT_MS has passed since the first, and has the backend *prepare* them
(tokenize with the fast tokenizer's batch call, cut into padded forward batches) in a tokenizer
thread. A compute task runs the prepared pools (forward passes, scores) in the one model worker
thread. The two meet in a queue of one pool, so the next pool is tokenized while the model
computes this one, and the event loop keeps accepting requests all the while. The backend
cuts each pool into forward passes of at most MODEL_MAX_BATCH_SIZE rows and
MODEL_MAX_BATCH_TOKENS padded tokens: a pool much larger than one forward batch is what keeps
padding low when lengths vary. A large request is simply many instances: it is split across
pools and can share them with others.

Pools are formed fairly between requests, not in arrival order: the queue keeps one line per
request and serves the lines by deficit round-robin on model rows (Shreedhar and Varghese,
"Efficient fair queuing using deficit round robin", SIGCOMM 1995). A request of 256 texts and 64
labels queued first no longer holds the model for the 16,384 rows ahead of a one-text request
that comes after it: the small request's instance joins the next pool that is formed, so it is
answered within four pools (the one computing, the one prepared, the one the collector holds
ready, the next), whatever the size of the large one. The large request's answers are
unchanged; only the order of its pools is.

A pool that fails (in either stage) is retried one instance at a time, so an instance the
model cannot take fails only its own request and never the requests it shared a pool with.

The instances admitted and not yet answered are bounded in total (MODEL_MAX_QUEUED_INSTANCES):
the body budget (body_budget.py) bounds bodies only until they are parsed, and the instances
parsed from them wait here for the model. A request whose instances do not fit is refused
whole before any is queued (429 with Retry-After, as text-embeddings-inference answers a full
queue), so nothing of it is computed and the client resends it; no admitted request is ever
dropped for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from batchinfer_protocol.predict_request import RequestError
from batchinfer_protocol.zero_shot import Prediction
from model_server.backends.base import Backend, Instance

logger = logging.getLogger(__name__)


class ShuttingDownError(RuntimeError):
    """The server stopped before this instance ran; the client may retry elsewhere."""


# What a refused client is told to wait: a pool of the default 1,024 rows computes in well
# under a second on a GPU and in a few on a CPU; the client's own backoff adds to this.
QUEUE_RETRY_AFTER_SECONDS = 1


class QueueFullError(RequestError):
    """The request's instances do not fit in what the queue has left: retry after a while."""

    def __init__(self, wanted: int, queued: int, limit: int) -> None:
        super().__init__(
            429,
            f"the server has {queued} instances waiting for the model and this request adds "
            f"{wanted}; the bound is {limit} (MODEL_MAX_QUEUED_INSTANCES): retry after "
            f"{QUEUE_RETRY_AFTER_SECONDS} s",
        )
        self.retry_after_seconds = QUEUE_RETRY_AFTER_SECONDS


@dataclass
class Pending:
    """An instance waiting for its prediction."""

    instance: Instance
    future: asyncio.Future[Prediction]
    rows: int
    enqueued_at: float = field(default_factory=time.perf_counter)


class FairQueue:
    """Instances waiting for a pool, one line per request, served by deficit round-robin.

    Each request (a `line`, any hashable key) with instances waiting is in a ring. The line at
    the ring's head may hand out instances while its deficit covers their rows; when it cannot,
    it gains `quantum_rows` and goes to the back of the ring. A line that empties leaves the
    ring and forgets its deficit (the algorithm's rule: credit is not saved up while idle). With
    the quantum at least the rows of the largest instance, every visit hands out at least one
    instance, so one `get_nowait` is O(1) rotations. Within a line, instances keep their order.

    Its interface is the part of `asyncio.Queue` the batcher uses (`get`, `get_nowait`,
    `empty`, `qsize`), with `put_nowait` naming the line.
    """

    def __init__(self, quantum_rows: int) -> None:
        if quantum_rows < 1:
            raise ValueError(f"quantum_rows must be at least 1, got {quantum_rows}")
        self.quantum_rows = quantum_rows
        self.lines: dict[object, deque[Pending]] = {}
        self.deficits: dict[object, int] = {}
        self.ring: deque[object] = deque()
        self.size = 0
        self.not_empty = asyncio.Event()

    def put_nowait(self, line: object, pending: Pending) -> None:
        """Queue `pending` at the end of its request's line."""
        queued = self.lines.get(line)
        if queued is None:
            queued = self.lines[line] = deque()
            self.deficits[line] = 0
            self.ring.append(line)
        queued.append(pending)
        self.size += 1
        self.not_empty.set()

    def empty(self) -> bool:
        return self.size == 0

    def qsize(self) -> int:
        return self.size

    def get_nowait(self) -> Pending:
        """The next instance in deficit round-robin order; `asyncio.QueueEmpty` when none."""
        if self.size == 0:
            raise asyncio.QueueEmpty
        line = self.ring[0]
        queued = self.lines[line]
        rows = queued[0].rows
        if self.deficits[line] < rows:
            # A new turn for this line. An instance larger than the quantum still goes in one
            # turn (its line then waits a turn's worth of rows less next time round).
            self.deficits[line] += max(self.quantum_rows, rows)
        self.deficits[line] -= rows
        pending = queued.popleft()
        self.size -= 1
        if not queued:
            del self.lines[line], self.deficits[line]
            self.ring.popleft()
        elif self.deficits[line] < queued[0].rows:
            self.ring.rotate(-1)
        if self.size == 0:
            self.not_empty.clear()
        return pending

    async def get(self) -> Pending:
        """The next instance, waiting for one if none is queued."""
        while self.size == 0:
            await self.not_empty.wait()
        return self.get_nowait()


@dataclass
class BatchObserver:
    """Hooks the app uses to feed its metrics; the batcher knows nothing about Prometheus."""

    on_batch: Callable[[int, int, float], None] = lambda instances, rows, seconds: None
    on_prepare: Callable[[float], None] = lambda seconds: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


@dataclass
class PreparedPool:
    """A pool of instances and what the backend's `prepare` made of them (None: it failed)."""

    batch: list[Pending]
    prepared: Any


class DynamicBatcher:
    """Merges instances from many requests into backend calls: a tokenizer thread prepares
    pools while the model's one worker thread computes the previous pool."""

    def __init__(
        self,
        backend: Backend,
        max_batch_rows: int,
        max_wait_seconds: float,
        fair_quantum_rows: int,
        observer: BatchObserver | None = None,
        max_queued_instances: int | None = None,
    ) -> None:
        """`fair_quantum_rows`: the model rows a request may add to pools per turn of the
        round-robin between requests (the server passes one forward batch, MODEL_MAX_BATCH_SIZE).
        `max_queued_instances`: instances admitted and not yet answered, all requests together
        (the server passes MODEL_MAX_QUEUED_INSTANCES; None, for tests of the loop alone: no
        bound)."""
        if max_queued_instances is not None and max_queued_instances < 1:
            raise ValueError(f"max_queued_instances must be at least 1, got {max_queued_instances}")
        self.backend = backend
        self.max_queued_instances = max_queued_instances
        # Instances of the requests in `predict` now: queued, in a pool, or being computed.
        self.admitted_instances = 0
        self.max_batch_rows = max_batch_rows
        self.max_wait_seconds = max_wait_seconds
        self.observer = observer or BatchObserver()
        self.queue = FairQueue(fair_quantum_rows)
        # One pool waits, prepared, while another computes: tokenizing further ahead would
        # only make pools smaller than the backlog allows.
        self.prepared: asyncio.Queue[PreparedPool] = asyncio.Queue(maxsize=1)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")
        self.tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the collector and compute tasks on the running event loop."""
        if not self.tasks:
            loop = asyncio.get_running_loop()
            self.tasks = [
                loop.create_task(self.collect_forever()),
                loop.create_task(self.compute_forever()),
            ]

    async def stop(self) -> None:
        """Stop both stages and fail whatever is still queued, so no caller waits forever."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []
        error = ShuttingDownError("the model server is shutting down")
        while not self.prepared.empty():
            for pending in self.prepared.get_nowait().batch:
                settle(pending, error=error)
        while not self.queue.empty():
            settle(self.queue.get_nowait(), error=error)
        self.tokenizer_executor.shutdown(wait=True)
        self.executor.shutdown(wait=True)

    async def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Predictions for the instances, in their order, once their batches have run.

        Raises `QueueFullError`, before queuing any of them, when they would take the instances
        admitted past `max_queued_instances` (up to it they are admitted).
        """
        limit = self.max_queued_instances
        if limit is not None and self.admitted_instances + len(instances) > limit:
            raise QueueFullError(len(instances), self.admitted_instances, limit)
        self.admitted_instances += len(instances)
        try:
            return await self.queue_and_wait(instances)
        finally:
            self.admitted_instances -= len(instances)

    async def queue_and_wait(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Queue the instances on one line of the fair queue and wait for all their answers."""
        loop = asyncio.get_running_loop()
        futures = []
        line = object()  # this request's line in the fair queue
        for instance in instances:
            future: asyncio.Future[Prediction] = loop.create_future()
            self.queue.put_nowait(line, Pending(instance, future, self.backend.rows(instance)))
            futures.append(future)
        self.observer.on_queue_depth(self.queue.qsize())
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    async def collect_forever(self) -> None:
        """Stage one: gather a pool, prepare it in the tokenizer thread, hand it on."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch()
            self.observer.on_queue_depth(self.queue.qsize())
            if not batch:
                continue
            instances = [pending.instance for pending in batch]
            started = time.perf_counter()
            try:
                prepared = await loop.run_in_executor(
                    self.tokenizer_executor, self.backend.prepare, instances
                )
                self.observer.on_prepare(time.perf_counter() - started)
            except Exception:
                logger.warning("preparing a pool of %d failed", len(batch), exc_info=True)
                prepared = None
            await self.prepared.put(PreparedPool(batch, prepared))

    async def compute_forever(self) -> None:
        """Stage two: compute prepared pools in the model's worker thread, in order."""
        while True:
            pool = await self.prepared.get()
            await self.run_pool(pool)

    async def next_batch(self) -> list[Pending]:
        """Instances for one backend call: wait for one, then gather more for a short while.

        When the wait is over, whatever is already queued still joins (up to the row limit):
        a request parsed in the same event-loop turn as the timeout would otherwise start a
        pool of its own, and a split pool is planned into more, smaller and more padded
        forward batches (on the benchmark's 100 texts sent as requests of 64 and 36: 25 %
        more padded tokens than one pool). Nothing can be queued while the queue is drained
        without awaiting, so this never extends the wait.

        Instances whose caller has gone (a cancelled future) are dropped here, not computed.
        """
        batch = [await self.queue.get()]
        rows = batch[0].rows
        deadline = time.perf_counter() + self.max_wait_seconds
        while rows < self.max_batch_rows:
            if self.queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    continue  # the queue is looked at once more: what came meanwhile joins
            else:
                pending = self.queue.get_nowait()
            batch.append(pending)
            rows += pending.rows
        return [pending for pending in batch if not pending.future.done()]

    async def run_pool(self, pool: PreparedPool) -> None:
        loop = asyncio.get_running_loop()
        batch = pool.batch
        started = time.perf_counter()
        try:
            if pool.prepared is None:
                raise RuntimeError("the pool could not be prepared")
            predictions = await loop.run_in_executor(
                self.executor, self.backend.compute, pool.prepared
            )
        except Exception:
            if len(batch) > 1:
                logger.warning("a pool of %d failed; retrying one by one", len(batch))
            for pending in batch:
                await self.run_alone(pending)
            return
        self.observer.on_batch(
            len(batch), sum(pending.rows for pending in batch), time.perf_counter() - started
        )
        for pending, prediction in zip(batch, predictions, strict=True):
            settle(pending, result=prediction)

    async def run_alone(self, pending: Pending) -> None:
        """One instance through both stages in the model's thread; its failure is its own."""
        if pending.future.done():
            return
        loop = asyncio.get_running_loop()
        try:
            [prediction] = await loop.run_in_executor(
                self.executor, self.backend.predict, [pending.instance]
            )
        except Exception:
            logger.exception("prediction failed for one instance")
            settle(pending, error=RuntimeError("the model failed on this instance"))
            return
        settle(pending, result=prediction)


def settle(
    pending: Pending, result: Prediction | None = None, error: Exception | None = None
) -> None:
    """Resolve a future unless its caller already gave up on it."""
    if pending.future.done():
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(result)  # type: ignore[arg-type]
