"""A clean ``make run`` prints no warning: the README's first command, run literally.

``make run`` on a fresh ``BATCHINFER_HOME``, in a private network namespace (its fixed ports,
3000 and 8080, never meet another server's), until the UI, the daemon and the model server have
all said they are up; then Ctrl-C, as a user stops it. Everything it printed until then is
checked for Dagster's warnings (a ``dagster.yaml`` in the working folder that will not be used,
a superseded command) and anything else that says ``warning``, and for tracebacks.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from batchinfer_testing.foreground import (
    Output,
    ctrl_c,
    kill_processes_with,
    private_network_available,
)
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_tools import run
from tests.services import unavailable

# What each of make run's three processes prints once it is up.
UP = {
    "webserver": "Serving dagster-webserver on http://127.0.0.1:3000",
    "daemon": "Instance is configured with the following daemons",
    "model server": "Uvicorn running on http://127.0.0.1:8080",
}
# Bounds on a hung start and stop (seconds), not measurements: the start takes ~40 s on a busy
# laptop; CI runs at load 16. Their sum stays under the test's own timeout.
START_DEADLINE_S = 600
STOP_DEADLINE_S = run.STOP_TIMEOUT_S + 60
pytestmark = [pytest.mark.slow, pytest.mark.timeout(START_DEADLINE_S + STOP_DEADLINE_S + 120)]


def run_until_up(home: Path) -> tuple[list[str], set[str], list[str]]:
    """``make run`` until every process in ``UP`` is up (or it exits), then Ctrl-C; its output,
    what came up, and what its stop left running (killed now, so a failed stop leaves nothing
    under the tests that follow)."""
    env = {**os.environ, "BATCHINFER_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    process = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", "ip link set lo up && exec make run"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(process)
    up: set[str] = set()
    deadline = time.monotonic() + START_DEADLINE_S
    try:
        while up != set(UP) and time.monotonic() < deadline and process.poll() is None:
            output.until("", min(deadline, time.monotonic() + 1))
            up = {name for name, marker in UP.items() if any(marker in x for x in output.lines)}
    finally:
        # Ctrl-C, as a user stops it (the whole foreground process group).
        try:
            ctrl_c(process, output, STOP_DEADLINE_S)
        finally:
            left = kill_processes_with(f"BATCHINFER_HOME={home}")
    up = {name for name, marker in UP.items() if any(marker in x for x in output.lines)}
    return output.lines, up, left


def test_a_clean_make_run_prints_no_warning(tmp_path: Path) -> None:
    if not private_network_available():
        unavailable("unshare -n (a private network namespace) is not permitted here")
    assert not (REPO_ROOT / "dagster.yaml").exists(), "dg dev warns about a dagster.yaml here"
    lines, up, left = run_until_up(tmp_path / "home")
    output = "\n".join(lines)
    assert left == [], output
    assert up == set(UP), f"not up: {set(UP) - up}\n{output}"
    assert [line for line in lines if "warning" in line.lower()] == [], output
    assert "Traceback" not in output, output
    # It ran on the fresh home it was given (`batchinfer where`, printed by make run).
    assert f'"home": "{tmp_path / "home"}"' in output
