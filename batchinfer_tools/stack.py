"""``make stack``: the production-like stack on a laptop, in one command.

PostgreSQL (the app database and Dagster's run and event storage) and the Pub/Sub emulator are
started the way the tests start them (``batchinfer_testing.services``), the two databases and the
Pub/Sub topology are created, and then the same ``make run`` runs against them: the model server
and ``dg dev``. A second shell gets the same settings with ``source <home>/env.sh`` (printed at
start). Ctrl-C stops everything, in the order a shutdown needs: ``make run`` (Dagster and the
model server) first, then the servers it uses, then their temporary data.

``running_stack`` is the setup alone (what tests/test_stack.py checks); ``main`` adds ``make run``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_testing.processes import stop_process_group
from batchinfer_testing.services import ServiceUnavailableError, postgres_server, pubsub_emulator
from batchinfer_tools import run

BIN = Path(sys.executable).parent
# How long `make run` may take to stop after Ctrl-C before it is terminated, then killed: its
# own bounded stop (batchinfer_tools.run: dg dev, the run workers, the model server) and a
# margin, so the servers below never stop under a Dagster that still uses them.
STOP_TIMEOUT_S = run.STOP_TIMEOUT_S + 30
APP_DATABASE = "batchinfer"
DAGSTER_DATABASE = "dagster"


def dagster_config(
    port: int, database: str, local_config: Path = REPO_ROOT / "dagster.local.yaml"
) -> dict[str, object]:
    """``dagster.local.yaml`` with Dagster's storage on PostgreSQL, as in production."""
    config = yaml.safe_load(local_config.read_text())
    config["storage"] = {
        "postgres": {
            "postgres_db": {
                "hostname": "127.0.0.1",
                "port": port,
                "username": "postgres",
                "password": "",
                "db_name": database,
                # As deploy/dagster.yaml: dagster-postgres needs psycopg2 under SQLAlchemy 2.1.
                "scheme": "postgresql+psycopg2",
            }
        }
    }
    return config


@dataclass(frozen=True)
class Stack:
    """A running stack: where its state is and the settings that point the commands at it.

    ``environment``: ``BATCHINFER_HOME``, ``DAGSTER_HOME``, ``BATCHINFER_DATABASE_URL``,
    ``BATCHINFER_QUEUE`` and ``PUBSUB_EMULATOR_HOST``, as ``env.sh`` exports them.
    """

    home: Path
    environment: dict[str, str]
    env_file: Path
    postgres_port: int
    emulator_host: str

    @property
    def dagster_home(self) -> Path:
        return Path(self.environment["DAGSTER_HOME"])


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Start PostgreSQL and the emulator, create the databases and topology; stop on exit.

    Raises ``ServiceUnavailableError`` when a server's binaries are not on ``PATH``, and
    ``subprocess.CalledProcessError`` when ``batchinfer pubsub create`` fails. On exit the
    servers stop and the home (the Dagster instance, ``env.sh``) is removed.
    """
    home = Path(tempfile.mkdtemp(prefix="batchinfer-stack-"))
    try:
        with postgres_server() as postgres, pubsub_emulator() as emulator:
            app_url = postgres.create_database(APP_DATABASE)
            postgres.create_database(DAGSTER_DATABASE)
            dagster_home = home / "dagster"
            dagster_home.mkdir()
            config = dagster_config(postgres.port, DAGSTER_DATABASE)
            # Written before `make run` starts: batchinfer_tools.instance_file keeps it as a
            # user's edit (PostgreSQL storage), writing the shipped file beside it.
            (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            environment = {
                "BATCHINFER_HOME": str(home),
                "DAGSTER_HOME": str(dagster_home),
                "BATCHINFER_DATABASE_URL": app_url,
                "BATCHINFER_QUEUE": "pubsub",
                "PUBSUB_EMULATOR_HOST": emulator.host,
            }
            env_file = home / "env.sh"
            env_file.write_text(
                "".join(
                    f"export {name}={shlex.quote(value)}\n" for name, value in environment.items()
                )
            )
            subprocess.run(
                [str(BIN / "batchinfer"), "pubsub", "create"],
                env={**os.environ, **environment},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            yield Stack(
                home=home,
                environment=environment,
                env_file=env_file,
                postgres_port=postgres.port,
                emulator_host=emulator.host,
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_until_interrupted(command: Sequence[str], environment: dict[str, str]) -> int:
    """Run ``command`` in a process group of its own; on Ctrl-C (or SIGTERM) stop that group
    first and wait for it, so the caller stops the servers only once nothing uses them.

    Its own session keeps the terminal's Ctrl-C from reaching it directly: this process
    forwards it as SIGINT (``make run``'s ordered stop, batchinfer_tools.run), waits
    ``STOP_TIMEOUT_S``, then terminates and kills what is left. Returns its exit status, or 0
    after an interrupt (the stop the user asked for; make then prints no error).
    """
    process = subprocess.Popen(
        list(command), cwd=REPO_ROOT, env={**os.environ, **environment}, start_new_session=True
    )
    # Set here, not inherited: a process started with SIGINT ignored (a background job of a
    # script, as CI starts one) keeps it ignored, and Ctrl-C would then stop nothing.
    previous = {
        sig: signal.signal(sig, signal.default_int_handler)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return process.wait()
    except KeyboardInterrupt:
        print("stopping make run, then PostgreSQL and the emulator ...", flush=True)
        try:
            process.wait(timeout=0)
        except subprocess.TimeoutExpired:
            stop_group(process)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_group(process: subprocess.Popen) -> None:
    """SIGINT to the group, as a terminal's Ctrl-C; SIGTERM, then SIGKILL, if it lingers.

    A second Ctrl-C while waiting goes straight to SIGTERM.
    """
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        stop_process_group(process, signal.SIGTERM, timeout=STOP_TIMEOUT_S)


# `make run` as a user types it: a make started from `make stack` is a sub-make, which prints
# "make[1]: Entering/Leaving directory" around its own output unless told not to.
MAKE_RUN = ("make", "--no-print-directory", "run")


def main(command: Sequence[str] = MAKE_RUN) -> int:
    """``make stack``: the stack, ``command`` (``make run``) against it, then a clean stop."""
    try:
        with running_stack() as stack:
            print(
                f"PostgreSQL on 127.0.0.1:{stack.postgres_port} (databases {APP_DATABASE}, "
                f"{DAGSTER_DATABASE}), Pub/Sub emulator on {stack.emulator_host}.\n"
                f"In another shell: source {BIN / 'activate'} && source {stack.env_file}",
                flush=True,
            )
            status = run_until_interrupted(command, stack.environment)
    except ServiceUnavailableError as error:
        print(f"cannot start the stack: {error}", file=sys.stderr)
        return 1
    print(
        f"stopped PostgreSQL and the emulator; removed {stack.home} (the stack's data and "
        "make run's log)",
        flush=True,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
