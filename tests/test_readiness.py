"""`make run`'s ready line: printed once the UI is up and the model server says ready."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from batchinfer_tools.readiness import READY_TIMEOUT_S, ready_line


def script(values: list) -> Callable[[], object]:
    """Each call the next value; the last one repeats."""
    iterator: Iterator = iter(values)
    last = [values[-1]]

    def next_value() -> object:
        last[0] = next(iterator, last[0])
        return last[0]

    return next_value


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_ready_once_both_the_ui_and_the_warm_model_answer() -> None:
    clock = Clock()
    states = script(["unreachable", "loading", "warming_up", "warming_up", "ready"])
    ui = script([False, True])

    line = ready_line(states, ui, clock=clock, sleep=clock.sleep)

    assert line.startswith("batchinfer is ready after 4 s")
    assert clock.now == 4.0


def test_a_model_ready_before_the_ui_waits_for_the_ui() -> None:
    clock = Clock()

    line = ready_line(
        script(["ready"]), script([False, False, True]), clock=clock, sleep=clock.sleep
    )

    assert line.startswith("batchinfer is ready after 2 s")


def test_a_failed_model_server_is_said_at_once() -> None:
    clock = Clock()

    line = ready_line(script(["loading", "failed"]), script([True]), clock=clock, sleep=clock.sleep)

    assert line.startswith("batchinfer is not ready after 1 s: the model server is failed")


def test_a_model_server_that_never_warms_is_said_at_the_timeout() -> None:
    clock = Clock()

    line = ready_line(script(["warming_up"]), script([True]), clock=clock, sleep=clock.sleep)

    assert line.startswith(f"batchinfer is not ready after {READY_TIMEOUT_S:.0f} s")
    assert "warming_up" in line
    assert clock.now == READY_TIMEOUT_S
