"""A second ``make run`` while one runs refuses, and touches nothing of the first.

It used to start anyway: its readiness line saw the first one's UI and model server answer and
said "ready" at once (a false line: its own servers could not bind), and it renamed the first
one's log to ``make-run.previous.log``. Here a listener stands in for the first ``make run``
on each of its two ports, in a private network namespace; ``batchinfer_tools.run`` must exit
with one line that names the port, start nothing, and leave the log as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchinfer_testing.foreground import kill_processes_with, private_network_available
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools.run import LOG_NAME
from tests.services import unavailable

pytestmark = pytest.mark.timeout(180)

# A private network namespace, then ``$0 -c "$1"``: this interpreter and a script.
IN_NAMESPACE = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$0" -c "$1"']
# In the namespace: a listener on the port, then make run's own step (what `make run` execs).
SECOND_START = """
import socket, subprocess, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", {port}))
listener.listen()
result = subprocess.run([sys.executable, "-m", "batchinfer_tools.run"], timeout=120)
sys.exit(result.returncode)
"""


@pytest.mark.parametrize("port", [3000, 8080], ids=["ui", "model-server"])
def test_a_second_make_run_refuses_and_leaves_the_first_ones_log(tmp_path: Path, port: int) -> None:
    if not private_network_available():
        unavailable("unshare -n (a private network namespace) is not permitted here")
    home = tmp_path / "home"
    log = home / "logs" / LOG_NAME
    log.parent.mkdir(parents=True)
    log.write_text("the first make run's output\n")
    env = {
        **os.environ,
        "BATCHINFER_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "BATCHINFER_MODEL_URL": "http://127.0.0.1:8080",
    }
    try:
        result = subprocess.run(
            [*IN_NAMESPACE, sys.executable, SECOND_START.format(port=port)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
    finally:
        # Without the refusal it starts the servers, in sessions of their own.
        left = kill_processes_with(f"BATCHINFER_HOME={home}")

    output = result.stdout + result.stderr
    assert left == [], output
    assert result.returncode == 1, output
    assert f"127.0.0.1:{port} already answers" in output, output
    assert "is ready" not in output, output
    assert "Traceback" not in output, output
    assert log.read_text() == "the first make run's output\n"
    assert sorted(path.name for path in log.parent.iterdir()) == [LOG_NAME]
