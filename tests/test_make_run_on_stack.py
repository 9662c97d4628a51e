"""Ctrl-C of ``make stack`` with a run in flight: Dagster stops before the servers it uses.

``make stack`` (PostgreSQL, the Pub/Sub emulator, then ``make run`` against them), literally, in
a private network namespace and with a private ``TMPDIR``, so that everything it and its children
create under the temporary folder is seen. Once ready, a backlog is published to the emulator and
as soon as a step started the whole foreground group gets SIGINT, as a terminal sends it. The
stop must print no traceback (a Dagster still running when PostgreSQL or the emulator stopped
printed ``Connection refused`` and ``QueueUnavailableError`` stacks), leave no process and nothing
in the temporary folder. Waits are on printed lines; deadlines only bound a hang.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchinfer_testing.foreground import (
    Output,
    ctrl_c,
    kill_processes_with,
    private_network_available,
    tails,
)
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools import stack
from batchinfer_tools.run import LOG_NAME
from tests.services import unavailable

# Bounds on a hung start, step and stop (seconds), not measurements: on a quiet machine the
# whole test takes about a minute; CI runs it at load 16, beside an image build. Their sum
# stays under the test's own timeout, so a hang fails with what was printed and the logs'
# tails, and the stop still runs.
START_DEADLINE_S = 900
STEP_DEADLINE_S = 300
STOP_DEADLINE_S = stack.STOP_TIMEOUT_S + 60
pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.pubsub,
    pytest.mark.timeout(START_DEADLINE_S + STEP_DEADLINE_S + STOP_DEADLINE_S + 120),
]

# What a make running these tests (`make test`) passes down: without them the `make` under
# test prints what a user's does, not "make[1]: Entering directory" lines.
NESTED_MAKE = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
READY = "batchinfer is ready after"
STEP_STARTED = "STEP_START"
BACKLOG = 1000
MAKE_RUN_STOPPING = "stopping Dagster, then the model server"
ENV_FILE = re.compile(r"source \S+ && source (?P<env>\S+/env\.sh)$")


# Run inside the stack's network namespace: features for the backlog, then the backlog.
PUBLISH = f"""
import json
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import TEXTS, local_feature_store, open_queue
settings = Settings()
local_feature_store(settings).upsert(
    [(i, f"{{TEXTS[i % len(TEXTS)]}} (ticket {{i}})") for i in range(1, {BACKLOG} + 1)]
)
queue = open_queue(settings)
try:
    queue.publish([json.dumps({{"id": str(i)}}).encode() for i in range(1, {BACKLOG} + 1)])
finally:
    queue.close()
"""


def publish_backlog(namespace_pid: int, env_file: Path) -> None:
    """``PUBLISH`` in the network namespace of ``namespace_pid``, with the settings a shell gets
    from the stack's ``env.sh`` (``export NAME=value`` lines)."""
    environment = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in env_file.read_text().splitlines()
    )
    subprocess.run(
        ["nsenter", "-t", str(namespace_pid), "-n", sys.executable, "-c", PUBLISH],
        env={**os.environ, **environment},
        cwd=REPO_ROOT,
        check=True,
        timeout=STEP_DEADLINE_S,
    )


@pytest.fixture
def tmp() -> Iterator[Path]:
    """An empty temporary folder that PostgreSQL's own user can enter (pytest's ``tmp_path``
    lies under a folder only its owner can: ``services.postgres_server`` runs initdb as the
    ``postgres`` user when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="batchinfer-stack-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def diagnosis(output: Output, tmp: Path) -> str:
    """What a failure shows: every line printed, and the tails of the logs of the stack under
    ``tmp`` (make run's children's output, PostgreSQL's and the emulator's), read before the
    stop removes them."""
    logs = [
        *tmp.glob(f"batchinfer-stack-*/logs/{LOG_NAME}"),
        *tmp.glob("batchinfer-pg-*/data/server.log"),
        *tmp.glob("batchinfer-pubsub-*/emulator.log"),
    ]
    return f"{output.text()}\n{tails(logs)}"


def test_ctrl_c_of_make_stack_stops_dagster_first_and_leaves_nothing(tmp: Path) -> None:
    if not private_network_available():
        unavailable("unshare -n (a private network namespace) is not permitted here")
    for binary in ("initdb", "pg_ctl", "gcloud", "java"):
        if not shutil.which(binary):
            unavailable(f"{binary} is not on PATH (make stack needs PostgreSQL and the emulator)")
    env = {**os.environ, "TMPDIR": str(tmp)}
    for name in ("DAGSTER_HOME", "BATCHINFER_HOME", "PUBSUB_EMULATOR_HOST", *NESTED_MAKE):
        env.pop(name, None)
    process = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", "ip link set lo up && exec make stack"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(process)
    interrupted_from = None
    try:
        try:
            started = output.until(READY, time.monotonic() + START_DEADLINE_S)
            assert started, diagnosis(output, tmp)
            env_file = next(m for line in output.lines if (m := ENV_FILE.search(line)))["env"]
            publish_backlog(process.pid, Path(env_file))
            stepped = output.until(STEP_STARTED, time.monotonic() + STEP_DEADLINE_S)
            assert stepped, diagnosis(output, tmp)
            interrupted_from = len(output.lines)
        finally:
            ended = ctrl_c(process, output, STOP_DEADLINE_S)
    finally:
        # A stop that failed must not leave a Dagster, a model server or the servers running
        # under the tests that follow.
        left = kill_processes_with(f"TMPDIR={tmp}")
    text = output.text(interrupted_from)
    assert ended, text
    assert left == [], text
    assert "Traceback" not in text, text
    assert "Stack Trace" not in text, text  # how Dagster's event log prints an error's stack
    # From make run's "stopping" line on: its lines only, its last ("stopped": its stop ended
    # before the servers stopped), then the stack's.
    after = output.lines[interrupted_from:]
    stopping = next(i for i, line in enumerate(after) if line.startswith(MAKE_RUN_STOPPING))
    assert after[-2] == "stopped", text
    own = after[stopping + 1 : -2]
    assert [line for line in own if " interrupted by the stop; " not in line] == [], text
    assert after[-1].startswith("stopped PostgreSQL and the emulator; removed "), text
    # torch's compile cache (torchinductor_<user>) is shared by every start of the model
    # server, by design; anything else is a leftover.
    left = [path.name for path in tmp.iterdir() if not path.name.startswith("torchinductor_")]
    assert left == [], text
