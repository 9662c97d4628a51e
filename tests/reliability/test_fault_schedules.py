"""Randomized fault schedules (issue 26), two fixed seeds at a small size.

Each seed drains its requests on the launcher path (real ``dagster-daemon``, PostgreSQL, the
Pub/Sub emulator, the model server) while ``batchinfer_testing.fault_schedule`` SIGKILLs the
daemon, the run workers and the model server and restarts PostgreSQL and the emulator at
progress points drawn from the seed; every request must be predicted once or dead-lettered with
a reason, nothing stuck. The drain is awaited on the ledger's state; the bound only stops a
drain that would never end. ``bench/bench_fault_schedules.py`` runs many seeds at a larger size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchinfer_testing.fault_schedule import (
    EMULATOR,
    FAULT_KINDS,
    FIRST_POINT,
    LAST_EMULATOR_POINT,
    LAST_POINT,
    RestartableEmulator,
    draw_schedule,
    restartable_emulator,
    run_schedule,
)
from batchinfer_testing.model_server import ModelServer, running_model_server
from batchinfer_testing.services import ServiceUnavailableError
from tests.services import PostgresServer, unavailable

SEEDS = (1, 2)
REQUESTS = 32
# Small batches so that 32 requests make 8 runs: the faults' progress points fall between runs
# and inside them rather than all on one batch's boundary.
BATCH_SIZE = 4
# A bound on the whole drain of one seed on a loaded 2-core machine, not a measurement.
DRAIN_BOUND_S = 1500


def test_a_seed_always_draws_the_same_schedule_one_fault_of_each_kind() -> None:
    assert draw_schedule(7) == draw_schedule(7)
    assert draw_schedule(7) != draw_schedule(8)
    for seed in range(200):
        schedule = draw_schedule(seed)
        assert sorted(fault.kind for fault in schedule) == sorted(FAULT_KINDS)
        assert [fault.at for fault in schedule] == sorted(fault.at for fault in schedule)
        for fault in schedule:
            last = LAST_EMULATOR_POINT if fault.kind == EMULATOR else LAST_POINT
            assert FIRST_POINT <= fault.at <= last, (seed, fault)


@pytest.fixture(scope="module")
def emulator_to_restart() -> Iterator[RestartableEmulator]:
    """An emulator of the module's own: the session's one must not be restarted under others."""
    try:
        with restartable_emulator() as emulator:
            yield emulator
    except ServiceUnavailableError as error:
        unavailable(str(error))


@pytest.fixture(scope="module")
def server_to_kill() -> Iterator[ModelServer]:
    """A model server of the module's own, killed by the schedules; no warm-up of every shape
    (on a loaded 2-core machine it alone takes minutes, and the fault here is not the model's)."""
    with running_model_server(MODEL_WARMUP="false") as server:
        yield server


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.pubsub
@pytest.mark.timeout(DRAIN_BOUND_S + 300)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_seeded_fault_schedule_loses_and_duplicates_nothing(
    seed: int,
    postgres: PostgresServer,
    emulator_to_restart: RestartableEmulator,
    server_to_kill: ModelServer,
    tmp_path: Path,
) -> None:
    result = run_schedule(
        seed,
        REQUESTS,
        postgres,
        emulator_to_restart,
        server_to_kill,
        tmp_path,
        timeout_s=DRAIN_BOUND_S,
        batch_size=BATCH_SIZE,
    )
    print(result)
    assert result.violation == ""
    assert sorted(entry.split("@")[0] for entry in result.injected) == sorted(FAULT_KINDS)
    assert (result.published, result.predicted) == (REQUESTS, REQUESTS)
    assert (result.lost, result.stuck, result.duplicates) == (0, 0, 0)
