"""A clean ``make run`` prints no warning: the README's first command, run literally.

``make run`` on a fresh ``BATCHINFER_HOME``, in a private network namespace (its fixed ports,
3000 and 8080, never meet another server's), until the UI, the daemon and the model server have
all said they are up; then Ctrl-C, as a user stops it. Everything it printed until then is
checked for Dagster's warnings (a ``dagster.yaml`` in the working folder that will not be used,
a superseded command) and anything else that says ``warning``, and for tracebacks.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from batchinfer_testing.model_server import REPO_ROOT
from tests.services import unavailable

pytestmark = pytest.mark.slow

# What each of make run's three processes prints once it is up.
UP = {
    "webserver": "Serving dagster-webserver on http://127.0.0.1:3000",
    "daemon": "Instance is configured with the following daemons",
    "model server": "Uvicorn running on http://127.0.0.1:8080",
}
# A bound on waiting for a hung start, not a measurement: the start takes ~40 s on a busy laptop.
START_DEADLINE_SECONDS = 400


def private_network_available() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def run_until_up(home: Path) -> tuple[list[str], set[str]]:
    """``make run`` until every process in ``UP`` is up (or it exits); its output, what came up."""
    env = {**os.environ, "BATCHINFER_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    process = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", "ip link set lo up && exec make run"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    up: set[str] = set()
    pending = b""
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    try:
        while up != set(UP) and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break  # make run exited
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                lines.append(line)
                up.update(name for name, marker in UP.items() if marker in line)
    finally:
        # Ctrl-C, as a user stops it (the whole foreground process group).
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return lines, up


def test_a_clean_make_run_prints_no_warning(tmp_path: Path) -> None:
    if not private_network_available():
        unavailable("unshare -n (a private network namespace) is not permitted here")
    assert not (REPO_ROOT / "dagster.yaml").exists(), "dg dev warns about a dagster.yaml here"
    lines, up = run_until_up(tmp_path / "home")
    output = "\n".join(lines)
    assert up == set(UP), f"not up: {set(UP) - up}\n{output}"
    assert [line for line in lines if "warning" in line.lower()] == [], output
    assert "Traceback" not in output, output
    # It ran on the fresh home it was given (`batchinfer where`, printed by make run).
    assert f'"home": "{tmp_path / "home"}"' in output
