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
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchinfer_testing.model_server import REPO_ROOT
from tests.services import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.pubsub]

# A bound on a hung start or stop, not a measurement.
DEADLINE_SECONDS = 600
# What a make running these tests (`make test`) passes down: without them the `make` under
# test prints what a user's does, not "make[1]: Entering directory" lines.
NESTED_MAKE = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
READY = "batchinfer is ready after"
STEP_STARTED = "STEP_START"
BACKLOG = 1000
MAKE_RUN_STOPPING = "stopping Dagster, then the model server"
ENV_FILE = re.compile(r"source \S+ && source (?P<env>\S+/env\.sh)$")


def read_lines(fd: int, lines: list[str], marker: str | None, deadline: float) -> bool:
    """Append ``fd``'s lines to ``lines`` until one holds ``marker`` (True), the output ends
    (True when ``marker`` is None) or the deadline passes."""
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return marker is None
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            lines.append(raw.decode(errors="replace"))
            if marker is not None and marker in lines[-1]:
                return True
    return False


def processes_with(variable: str) -> list[str]:
    """Command lines of the processes whose environment holds ``variable`` (``NAME=value``)."""
    marker = f"{variable}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


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


def test_ctrl_c_of_make_stack_stops_dagster_first_and_leaves_nothing(tmp: Path) -> None:
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    fd = process.stdout.fileno()
    lines: list[str] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        assert read_lines(fd, lines, READY, deadline), "\n".join(lines)
        env_file = next(m for line in lines if (m := ENV_FILE.search(line)))["env"]
        publish_backlog(process.pid, Path(env_file))
        assert read_lines(fd, lines, STEP_STARTED, deadline), "\n".join(lines)
        interrupted_from = len(lines)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        ended = read_lines(fd, lines, None, time.monotonic() + DEADLINE_SECONDS)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    after = lines[interrupted_from:]
    text = "\n".join(after)
    assert ended, text
    assert "Traceback" not in text, text
    assert "Stack Trace" not in text, text  # how Dagster's event log prints an error's stack
    # From make run's "stopping" line on: its lines only, its last ("stopped": its stop ended
    # before the servers stopped), then the stack's.
    stopping = next(i for i, line in enumerate(after) if line.startswith(MAKE_RUN_STOPPING))
    assert after[-2] == "stopped", text
    own = after[stopping + 1 : -2]
    assert [line for line in own if " interrupted by the stop; " not in line] == [], text
    assert after[-1].startswith("stopped PostgreSQL and the emulator; removed "), text
    assert processes_with(f"TMPDIR={tmp}") == [], text
    # torch's compile cache (torchinductor_<user>) is shared by every start of the model
    # server, by design; anything else is a leftover.
    left = [path.name for path in tmp.iterdir() if not path.name.startswith("torchinductor_")]
    assert left == [], text
