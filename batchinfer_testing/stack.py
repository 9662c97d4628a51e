"""``make stack``: the production-like stack on a laptop, in one command.

PostgreSQL (the app database and Dagster's run and event storage) and the Pub/Sub emulator are
started the way the tests start them (``batchinfer_testing.services``), the two databases and the
Pub/Sub topology are created, and then the same ``make run`` runs against them: the model server
and ``dg dev``. A second shell gets the same settings with ``source <home>/env.sh`` (printed at
start). Ctrl-C stops everything; the servers' data is temporary and removed with them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_testing.services import ServiceUnavailableError, postgres_server, pubsub_emulator

BIN = Path(sys.executable).parent


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


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="batchinfer-stack-"))
    try:
        with postgres_server() as postgres, pubsub_emulator() as emulator:
            app_url = postgres.create_database("batchinfer")
            postgres.create_database("dagster")
            dagster_home = home / "dagster"
            dagster_home.mkdir()
            config = dagster_config(postgres.port, "dagster")
            (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            settings = {
                "BATCHINFER_HOME": str(home),
                "DAGSTER_HOME": str(dagster_home),
                "BATCHINFER_DATABASE_URL": app_url,
                "BATCHINFER_QUEUE": "pubsub",
                "PUBSUB_EMULATOR_HOST": emulator.host,
            }
            env_file = home / "env.sh"
            env_file.write_text(
                "".join(f"export {name}={shlex.quote(value)}\n" for name, value in settings.items())
            )
            env = {**os.environ, **settings}
            subprocess.run([str(BIN / "batchinfer"), "pubsub", "create"], env=env, check=True)
            print(
                f"PostgreSQL on 127.0.0.1:{postgres.port} (databases batchinfer, dagster), "
                f"Pub/Sub emulator on {emulator.host}.\n"
                f"In another shell: source .venv/bin/activate && source {env_file}",
                flush=True,
            )
            try:
                return subprocess.run(["make", "run"], cwd=REPO_ROOT, env=env).returncode
            except KeyboardInterrupt:
                # `make run` got the same Ctrl-C and stops by itself; the servers stop next.
                return 130
    except ServiceUnavailableError as error:
        print(f"cannot start the stack: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
