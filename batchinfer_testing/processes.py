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
