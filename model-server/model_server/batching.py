"""Dynamic batching: instances of concurrent requests share model batches.

Each request puts its instances on one asyncio queue and awaits one future per instance. A
single collector task takes instances off the queue until they fill MODEL_BATCH_POOL_ROWS model
rows or MODEL_BATCH_WAIT_MS has passed since the first, and runs the backend on them in the one
worker thread, so the event loop keeps accepting requests while the model computes. The backend
sorts the pool by length and cuts it into forward passes of MODEL_MAX_BATCH_SIZE rows: a pool
much larger than one forward batch is what keeps padding low when lengths vary. A large request
is simply many instances: it is split across pools and can share them with others.

A batch that fails is retried one instance at a time, so an instance the model cannot take
fails only its own request and never the requests it shared a batch with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from model_server.backends.base import Backend, Instance, Prediction

logger = logging.getLogger(__name__)


class ShuttingDownError(RuntimeError):
    """The server stopped before this instance ran; the client may retry elsewhere."""


@dataclass
class Pending:
    """An instance waiting for its prediction."""

    instance: Instance
    future: asyncio.Future[Prediction]
    rows: int
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchObserver:
    """Hooks the app uses to feed its metrics; the batcher knows nothing about Prometheus."""

    on_batch: Callable[[int, int, float], None] = lambda instances, rows, seconds: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


class DynamicBatcher:
    """Merges instances from many requests into backend calls, in one worker thread."""

    def __init__(
        self,
        backend: Backend,
        max_batch_rows: int,
        max_wait_seconds: float,
        observer: BatchObserver | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch_rows = max_batch_rows
        self.max_wait_seconds = max_wait_seconds
        self.observer = observer or BatchObserver()
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.collect_forever())

    async def stop(self) -> None:
        """Stop collecting and fail whatever is still queued, so no caller waits forever."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        while not self.queue.empty():
            pending = self.queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ShuttingDownError("the model server is shutting down"))
        self.executor.shutdown(wait=True)

    async def predict(self, instances: Sequence[Instance]) -> list[Prediction]:
        """Predictions for the instances, in their order, once their batches have run."""
        loop = asyncio.get_running_loop()
        futures = []
        for instance in instances:
            future: asyncio.Future[Prediction] = loop.create_future()
            self.queue.put_nowait(Pending(instance, future, self.backend.rows(instance)))
            futures.append(future)
        self.observer.on_queue_depth(self.queue.qsize())
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    async def collect_forever(self) -> None:
        while True:
            batch = await self.next_batch()
            self.observer.on_queue_depth(self.queue.qsize())
            if batch:
                await self.run_batch(batch)

    async def next_batch(self) -> list[Pending]:
        """Instances for one backend call: wait for one, then gather more for a short while.

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
                    break
            else:
                pending = self.queue.get_nowait()
            batch.append(pending)
            rows += pending.rows
        return [pending for pending in batch if not pending.future.done()]

    async def run_batch(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        instances = [pending.instance for pending in batch]
        started = time.perf_counter()
        try:
            predictions = await loop.run_in_executor(self.executor, self.backend.predict, instances)
        except Exception:
            if len(batch) == 1:
                logger.exception("prediction failed for one instance")
                settle(batch[0], error=RuntimeError("the model failed on this instance"))
                return
            logger.warning("a batch of %d failed; retrying one by one", len(batch), exc_info=True)
            for pending in batch:
                await self.run_batch([pending])
            return
        self.observer.on_batch(
            len(batch), sum(pending.rows for pending in batch), time.perf_counter() - started
        )
        for pending, prediction in zip(batch, predictions, strict=True):
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
