"""``make demo``: the walkthrough end to end, on real processes, in a scratch directory.

It migrates a scratch database (``batchinfer db upgrade``: sensor ticks only check the schema),
starts the model server and the Dagster daemon (which runs the sensor and launches the
partitioned runs), then does what a user does by hand: add a data point, import the data, publish
``{"id": "1"}``, and wait for ``batchinfer prediction 1``. Everything runs on embedded defaults
under a temporary ``BATCHINFER_HOME``, so it never touches the user's own ``.batchinfer``. That
scratch directory is removed when the demo succeeds; when it fails or is interrupted it is kept,
and the last line names it and its logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from batchinfer_testing.processes import free_port, stop_process_group, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREDICTION_TIMEOUT_SECONDS = 180.0


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop_process_group(process)


def _batchinfer(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if check:
        shown = " ".join(repr(a) if " " in a or "{" in a else a for a in args)
        print(f"$ batchinfer {shown}", flush=True)
    result = subprocess.run(
        [str(BIN / "batchinfer"), *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise SystemExit(f"batchinfer {args[0]} failed: {result.stderr.strip()}")
    return result


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="batchinfer-demo-"))
    kept = f"its logs are kept in {scratch} (model_server.log, daemon.log); remove it when done"
    try:
        walkthrough(scratch)
    except KeyboardInterrupt:
        raise SystemExit(f"demo interrupted; {kept}") from None
    except SystemExit as error:
        raise SystemExit(f"{error.code}; {kept}") from None
    except Exception:
        print(f"demo failed; {kept}", file=sys.stderr)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"(removed the demo's scratch directory {scratch})")


def walkthrough(scratch: Path) -> None:
    """The walkthrough's commands on their own model server and daemon, under ``scratch``."""
    dagster_home = scratch / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.local.yaml", dagster_home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "BATCHINFER_HOME": str(scratch),
        "DAGSTER_HOME": str(dagster_home),
        "AIP_HTTP_PORT": str(port),
        "BATCHINFER_MODEL_URL": f"http://127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("BATCHINFER_DATABASE_URL", "BATCHINFER_QUEUE", "BATCHINFER_FEATURE_STORE"):
        env.pop(name, None)
    print(f"demo in {scratch}", flush=True)
    print(_batchinfer(env, "db", "upgrade").stdout, end="")
    model_log, daemon_log = scratch / "model_server.log", scratch / "daemon.log"
    with (
        _process([str(BIN / "python"), "-m", "model_server"], env, model_log) as model,
        _process([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, daemon_log),
    ):
        wait_until_healthy(f"http://127.0.0.1:{port}/health", model, output=model_log.read_text)
        print(_batchinfer(env, "add-data-point", "test input data 1").stdout, end="")
        print(_batchinfer(env, "import-data").stdout, end="")
        print(_batchinfer(env, "publish", '{"id": "1"}').stdout, end="")
        started = time.monotonic()
        while time.monotonic() - started < PREDICTION_TIMEOUT_SECONDS:
            result = _batchinfer(env, "prediction", "1", check=False)
            if result.returncode == 0:
                print("$ batchinfer prediction 1")
                print(result.stdout, end="")
                print(f"(prediction stored {time.monotonic() - started:.1f}s after publishing)")
                print(_batchinfer(env, "status").stdout, end="")
                return
            time.sleep(1)
    raise SystemExit(f"demo failed: no prediction after {PREDICTION_TIMEOUT_SECONDS:.0f} s")


if __name__ == "__main__":
    main()
