"""A ``make`` target run as a user runs it in a terminal, for the tests of ``make run`` and
``make stack``: its output read line by line as it comes, Ctrl-C to its foreground group, and
what it leaves behind found and killed.

``make run`` starts its children (the model server, ``dg dev`` and what those start) in
sessions of their own, so a signal to the test's process group never reaches them: what a
failed stop leaves is found by an environment variable the test gave the target alone
(``processes_with``), and killed by process id (``kill_processes_with``), so a failing test
never leaves a Dagster or a model server running under the tests that follow it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

# How much of a log a failure message quotes (lines).
TAIL_LINES = 60


class Output:
    """The lines a process prints on its stdout pipe, read as they come."""

    def __init__(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.lines: list[str] = []
        self.pending = b""

    def until(self, marker: str | None, deadline: float) -> bool:
        """Read until a line holds ``marker`` (True), the output ends or ``deadline``
        (``time.monotonic()``) passes (False). Every line read is kept, those after the
        marker's in the same read included.

        ``marker=None`` reads to the end of the output (True once it ended).
        """
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return marker is None
            self.pending += chunk
            *complete, self.pending = self.pending.split(b"\n")
            new = [raw.decode(errors="replace") for raw in complete]
            self.lines.extend(new)
            if marker is not None and any(marker in line for line in new):
                return True
        return False

    def text(self, start: int = 0) -> str:
        return "\n".join(self.lines[start:])


def private_network_available() -> bool:
    """Whether this user may make a private network namespace (``unshare -n``): the tests run
    ``make run`` in one, so its fixed ports never meet another server's."""
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def ctrl_c(process: subprocess.Popen, output: Output, timeout: float) -> bool:
    """SIGINT to the whole foreground group, as a terminal sends it; read the output to its
    end, at most ``timeout`` seconds. Whether it ended; a group still there then is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    ended = output.until(None, time.monotonic() + timeout)
    try:
        process.wait(timeout=10 if ended else 0.1)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return ended


def processes_with(variable: str) -> dict[int, str]:
    """The processes whose environment holds ``variable`` (``NAME=value``): id -> command line.

    Children inherit the environment whatever session they run in, so this finds all that a
    target started. This process is left out.
    """
    marker = f"{variable}\0".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found[int(proc.name)] = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def kill_processes_with(variable: str) -> list[str]:
    """SIGKILL every process ``processes_with(variable)`` finds; their command lines."""
    found = processes_with(variable)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return list(found.values())


def tails(paths: Iterable[Path], lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of each file in ``paths`` that exists, each under its name: what
    a failure message quotes of the logs a target writes (they may be gone after its stop)."""
    parts = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(parts)
