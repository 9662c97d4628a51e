"""Where the server's time goes: CPU and wall seconds per stage, and the device's busy time.

The stages of a pool, in the threads that run them:

- ``tokenize`` (tokenizer thread): texts and hypotheses to token ids, each once;
- ``assemble`` (tokenizer thread): pairs joined with their special tokens and truncated, cut
  into planned forward batches, padded into host arrays;
- ``forward`` (model worker thread): inputs copied to the device and the forward passes
  launched (on CUDA the thread's CPU time is the launch cost; on CPU the runtime's own
  threads do the arithmetic, which this thread's CPU clock does not see, so read the wall
  clock there);
- ``postprocess`` (model worker thread): the pool's results copied back (the one wait for
  the device), the pipeline's scores and the ranked answers.

CPU time is the stage thread's own (`time.thread_time`), so a stage that waits (for the GIL,
for the device) is not charged for it; wall time is the stage's span. Divided by the texts
answered (`model_server_instances_total`), they give the CPU cost per text of each stage,
which is what says whether the tokenizer thread can keep a GPU fed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

STAGES = ("tokenize", "assemble", "forward", "postprocess")


class StageClock:
    """Sums of CPU and wall seconds per stage, and of the device's busy seconds.

    Hooks (the app feeds Prometheus with them; backends know nothing of it):
    `on_stage(stage, cpu_seconds, wall_seconds)` after each stage ran, `on_device_busy(seconds)`
    as device time is known. The clocks are injectable so tests can drive them.
    """

    def __init__(
        self,
        cpu_clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cpu_clock = cpu_clock
        self.wall_clock = wall_clock
        self.on_stage: Callable[[str, float, float], None] = lambda stage, cpu, wall: None
        self.on_device_busy: Callable[[float], None] = lambda seconds: None
        self.cpu: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.wall: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.device_seconds = 0.0
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the CPU and wall time of the block to stage `name` (one of STAGES)."""
        if name not in self.cpu:
            raise ValueError(f"unknown stage {name!r}; the stages are {STAGES}")
        cpu, wall = self.cpu_clock(), self.wall_clock()
        try:
            yield
        finally:
            cpu, wall = self.cpu_clock() - cpu, self.wall_clock() - wall
            with self.lock:
                self.cpu[name] += cpu
                self.wall[name] += wall
            self.on_stage(name, cpu, wall)

    def device_busy(self, seconds: float) -> None:
        """The device computed forward batches for `seconds` more."""
        if seconds <= 0:
            return
        with self.lock:
            self.device_seconds += seconds
        self.on_device_busy(seconds)
