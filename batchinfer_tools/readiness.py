"""The one line `make run` prints when everything is ready: the UI answers and the model is warm.

`make run` starts the model server and ``dg dev`` together; the UI is up in seconds, the model
server loads and warms up for tens of seconds more (longer on a busy CPU). Until it is ready,
predictions wait for it (the model client waits while ``/health`` says ``loading`` or
``warming_up``), so nothing fails, but a new user cannot tell when to expect an answer. This
watches both and prints one line: ready, with the seconds it took, or why not.

    python -m batchinfer_tools.readiness   # what `make run` runs in the background
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import httpx

from batchinfer_dagster.clients.model_client import HEALTH_ROUTE, read_health

# `dg dev`'s webserver: its default host and port, and the route that answers once it serves.
UI_URL = "http://127.0.0.1:3000"
UI_ROUTE = "/server_info"
# How long to watch before saying it is not ready: past the slowest CPU warm-up seen (138 s).
READY_TIMEOUT_S = 600.0
POLL_S = 1.0


def ready_line(
    model_state: Callable[[], str],
    ui_up: Callable[[], bool],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = READY_TIMEOUT_S,
) -> str:
    """Wait until the UI is up and the model server says ``ready``; the line to print.

    Returns early with the reason when the model server says it failed (it will not become
    ready by itself), or at ``timeout``. ``unreachable`` is waited for: the server's process
    imports its libraries before it listens.
    """
    started = clock()
    while True:
        state, ui = model_state(), ui_up()
        waited = clock() - started
        if state == "ready" and ui:
            return (
                f"batchinfer is ready after {waited:.0f} s: the UI at {UI_URL}, the model server "
                "warm; publish requests now (`batchinfer status` shows the same)"
            )
        if state == "failed":
            return (
                f"batchinfer is not ready after {waited:.0f} s: the model server is {state} "
                "(its log is above); predictions wait for it"
            )
        if waited >= timeout:
            return (
                f"batchinfer is not ready after {waited:.0f} s: the model server is {state}, the "
                f"UI {'up' if ui else 'not up'}; predictions wait for the model server"
            )
        sleep(POLL_S)


def print_line(line: str) -> None:
    print(line, flush=True)


def main(say: Callable[[str], None] = print_line) -> int:
    """Print (``say``) the line once ready, or why not; ``make run`` passes its output relay."""
    from batchinfer_dagster.settings import load_settings

    model_url = load_settings().model_url
    health_url = model_url.rstrip("/") + HEALTH_ROUTE
    with httpx.Client() as client:

        def model_state() -> str:
            if model_url.startswith("vertex://"):
                return "ready"  # a Vertex AI endpoint: deployed and serving, or not ours to wait
            return read_health(client, health_url)

        def ui_up() -> bool:
            try:
                return client.get(UI_URL + UI_ROUTE, timeout=POLL_S).status_code == 200
            except httpx.TransportError:
                return False

        say(ready_line(model_state, ui_up))
    return 0


if __name__ == "__main__":
    sys.exit(main())
