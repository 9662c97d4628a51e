"""``python -m batchinfer_dagster.wait_for_database --timeout S -- COMMAND...``: wait until the
app database accepts a connection, then become COMMAND.

Every Dagster container on Cloud Run starts with it (terraform/dagster.tf: the container's
``command``; the run launcher and ``deploy/run.sh`` override only the ``args``, the COMMAND).
With Direct VPC egress and Cloud NAT, Google documents that an instance may have no network
connectivity for 30 s to over a minute after it starts (Cloud Run, "Direct VPC egress with a
VPC network": limitations), and each Dagster run is a fresh job execution; dagster-postgres
gives up after about 6 s of retries, so a run would fail before it began. The wait is bounded
(``--timeout``, Terraform's ``database_wait_seconds``) and ends with one line naming the
database and the last error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from batchinfer_dagster.db import DatabaseUnavailableError
from batchinfer_dagster.settings import Settings

# Between attempts; each attempt is bounded by its own connect timeout.
RETRY_INTERVAL_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 5


def probe_engine(url: str) -> sa.Engine:
    """An engine that opens one fresh connection per attempt, each bounded in time."""
    connect_args = (
        {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if url.startswith("postgres") else {}
    )
    return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)


def wait_for_database(
    engine: sa.Engine,
    *,
    timeout: float,
    interval: float = RETRY_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Try ``SELECT 1`` until it answers; returns the attempts it took.

    Raises ``DatabaseUnavailableError`` once ``timeout`` seconds have passed since the first
    attempt (an attempt that starts at the deadline is the last).
    """
    deadline = clock() + timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return attempts
        except sa.exc.SQLAlchemyError as exc:
            error = " ".join(str(getattr(exc, "orig", None) or exc).split())
        if clock() >= deadline:
            where = engine.url.render_as_string(hide_password=True)
            raise DatabaseUnavailableError(
                f"the app database {where} did not answer within {timeout:g} s "
                f"({attempts} attempts; last: {error}); check Cloud SQL, the VPC egress and "
                "BATCHINFER_DATABASE_URL"
            )
        sleep(min(interval, max(0.0, deadline - clock())))


def main(argv: Sequence[str] | None = None) -> None:
    """Wait, then replace this process with the command (its exit status is the container's)."""
    parser = argparse.ArgumentParser(prog="python -m batchinfer_dagster.wait_for_database")
    parser.add_argument("--timeout", type=float, required=True, help="seconds to wait at most")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGUMENT...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after the wait, after --")
    engine = probe_engine(Settings().resolved_database_url)
    try:
        attempts = wait_for_database(engine, timeout=args.timeout)
    except DatabaseUnavailableError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        engine.dispose()
    if attempts > 1:
        print(f"the app database answered after {attempts} attempts", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
