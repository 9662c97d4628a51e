"""Child processes that start whole trees (gcloud's Java emulator, dagster's run workers, the
model server): each runs in its own session, so stopping it stops the whole group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(
    process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Signal a child started with ``start_new_session=True`` and its children; SIGKILL what
    is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def live_group_members(pgid: int) -> list[int]:
    """The pids of process group ``pgid`` that are alive now (zombies left out), from /proc.

    A process whose leader died keeps its group id; ``os.killpg(pgid, 0)`` would also count
    zombies that nobody has reaped yet, so the state is read (``proc_pid_stat(5)``: field 3 is
    the state, field 5 the process group).
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            state, _parent, group = stat[stat.rindex(")") + 2 :].split()[:3]
            if int(group) == pgid and state not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def reap_process_group(
    pgid: int, *, which: Callable[[int], bool] = lambda pid: True, timeout: float = 30
) -> list[int]:
    """SIGKILL what is left of process group ``pgid`` (those members ``which`` picks) and wait
    until none of them is alive.

    For a leader started with ``start_new_session=True`` that was killed alone (SIGKILL, the OOM
    killer): its children live on in its group, as orphans, until something kills them, which a
    supervisor restarting the leader does (systemd's default ``KillMode=control-group``, a
    container's exit). Returns the pids that were still alive; RuntimeError naming those alive
    after ``timeout`` seconds.
    """
    first = [pid for pid in live_group_members(pgid) if which(pid)]
    deadline = time.monotonic() + timeout
    while members := [pid for pid in live_group_members(pgid) if pid in first]:
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"processes {members} of group {pgid} survived SIGKILL for {timeout} s"
            )
        time.sleep(0.05)
    return first


def wait_until_healthy(
    url: str,
    process: subprocess.Popen,
    *,
    timeout: float = 180,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``process`` exits first.

    ``output`` gives the process's last output for the error message.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}: {output()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s: {output()[-2000:]}")
