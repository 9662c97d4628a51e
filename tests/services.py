"""Real servers for the tests (``batchinfer_testing.services``), skipped or failed when missing.

Outside CI a missing binary skips the tests that need it; with ``CI=true`` it fails them, so CI
can never pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NoReturn, TypeVar

import pytest

from batchinfer_testing import services
from batchinfer_testing.services import PostgresServer, PubSubEmulator, wait_for_port

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

__all__ = [
    "PostgresServer",
    "PubSubEmulator",
    "postgres_server",
    "pubsub_emulator",
    "unavailable",
    "wait_for_port",
]


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI, fail in CI."""
    if IN_CI:
        pytest.fail(f"required test service unavailable in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def _started(server: contextlib.AbstractContextManager[T]) -> Iterator[T]:
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(server)
        except services.ServiceUnavailableError as error:
            unavailable(str(error))
        yield running


def postgres_server() -> contextlib.AbstractContextManager[PostgresServer]:
    return _started(services.postgres_server())


def pubsub_emulator(
    project: str = "local-project",
) -> contextlib.AbstractContextManager[PubSubEmulator]:
    return _started(services.pubsub_emulator(project))
