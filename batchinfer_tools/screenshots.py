"""The README's screenshots, taken from a real run of the README's own steps.

``tools/screenshots`` runs this module inside a private network namespace (``make run`` binds
the fixed ports 3000 and 8080). On a fresh ``BATCHINFER_HOME`` it starts ``make run``, runs the
walkthrough's commands exactly as the README's ``bash`` block under "The walkthrough" gives
them (in a shell that sourced ``.venv/bin/activate``, as the README says; ``batchinfer
prediction`` again until it answers, as the README says), waits until Dagster has recorded the
``predictions`` materialization, and then has headless Chromium screenshot the pages the README
shows into ``docs/img``. Ctrl-C stops ``make run`` at the end, as a user stops it.

Chromium: Debian's ``chromium`` package (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_testing.processes import stop_process_group

UI = "http://127.0.0.1:3000"
# Width × height in CSS pixels: the asset graph fits in 820 rows; the partition page needs
# 1000 for its metadata down to label_distribution.
GRAPH_WINDOW = (1500, 820)
PARTITION_WINDOW = (1500, 1000)
# Chromium renders with virtual time: the page's own timers run this many milliseconds (the UI
# fetches, then lays out the graph) before the screenshot, however slow the machine.
VIRTUAL_TIME_BUDGET_MS = 20000


class ScreenshotError(RuntimeError):
    """A step of the walkthrough or a screenshot failed; the message says which and its output."""


def walkthrough_commands(readme: str) -> list[list[str]]:
    """The command lines of the README's walkthrough: its first ``bash`` block, comments dropped.

    Shape: one ``argv`` list per non-empty line, split as bash would (``shlex``, so
    ``'{"id": "1"}'`` stays one argument and a trailing ``# ...`` is a comment).
    Raises ``ScreenshotError`` when the README has no such section or block.
    """
    section = re.search(r"^## The walkthrough$(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    if section is None:
        raise ScreenshotError("README.md has no '## The walkthrough' section")
    block = re.search(r"^```bash\n(.*?)^```$", section.group(1), flags=re.M | re.S)
    if block is None:
        raise ScreenshotError("the walkthrough section of README.md has no ```bash block")
    lines = (shlex.split(line, comments=True) for line in block.group(1).splitlines())
    return [argv for argv in lines if argv]


@dataclass(frozen=True)
class Page:
    """A page the README shows: its path on the UI, the image file it becomes and the window
    (width, height) it is taken in, which is the image's size."""

    path: str
    image: str
    window: tuple[int, int]


# The pages the README shows, in its order; ``{partition}``: the walkthrough's predictions batch.
PAGES = (
    Page("/asset-groups", "asset-graph.png", GRAPH_WINDOW),
    Page(
        "/assets/predictions?view=partitions&partition={partition}",
        "predictions-partition.png",
        PARTITION_WINDOW,
    ),
)


def chromium_command(chromium: str, url: str, output: Path, window: tuple[int, int]) -> list[str]:
    """Headless Chromium taking one screenshot of ``url`` in a ``window`` (width, height)."""
    width, height = window
    return [
        chromium,
        "--headless",
        # Running as root (a container, this script's namespace) needs it; nothing is browsed
        # but the local UI.
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        f"--screenshot={output}",
        url,
    ]


def wait_until(condition: object, what: str, timeout: float, interval: float = 1.0) -> None:
    """Poll ``condition()`` until it is true; ``ScreenshotError`` naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise ScreenshotError(f"{what}: not within {timeout:.0f} s")


def ui_answers() -> bool:
    try:
        return httpx.get(f"{UI}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def make_run(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``make run`` in the background until the block ends, then Ctrl-C (SIGINT to its group)."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop_process_group(process, signal.SIGINT, timeout=60)


def run_walkthrough(commands: list[list[str]], env: dict[str, str], timeout: float) -> None:
    """Each command in a shell that sourced the venv; ``prediction`` again until it answers."""
    activate = shlex.quote(str(REPO_ROOT / ".venv" / "bin" / "activate"))
    for argv in commands:
        script = f"source {activate} && {shlex.join(argv)}"
        print(f"$ {shlex.join(argv)}", flush=True)

        def succeeds(script: str = script) -> bool:
            result = subprocess.run(
                ["bash", "-c", script], env=env, cwd=Path.home(), capture_output=True, text=True
            )
            if result.returncode == 0:
                print(result.stdout.strip()[:400], flush=True)
            return result.returncode == 0

        if argv[:2] == ["batchinfer", "prediction"]:
            wait_until(succeeds, f"{shlex.join(argv)} answering", timeout, interval=2)
        elif not succeeds():
            raise ScreenshotError(f"{shlex.join(argv)} failed")


def dismiss_community_dialog() -> None:
    """What the dialog's Skip does (GraphQL ``setNuxSeen``): a new user sees it once, on top."""
    response = httpx.post(f"{UI}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30)
    response.raise_for_status()
    if response.json().get("data", {}).get("setNuxSeen") is not True:
        raise ScreenshotError(f"the UI did not take setNuxSeen: {response.text[:400]}")


def latest_predictions_partition(dagster_home: Path) -> str | None:
    """The partition of the newest ``predictions`` materialization Dagster recorded, if any."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(AssetKey("predictions"))
    if event is None or event.dagster_event is None:
        return None
    return event.dagster_event.partition


def screenshot(chromium: str, url: str, output: Path, window: tuple[int, int]) -> None:
    result = subprocess.run(
        chromium_command(chromium, url, output, window),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not output.exists():
        raise ScreenshotError(f"chromium could not screenshot {url}: {result.stderr[-2000:]}")
    print(f"{url} -> {output}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "img")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per wait")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not on PATH: apt-get install chromium", file=sys.stderr)
        return 1
    home = Path(tempfile.mkdtemp(prefix="batchinfer-screenshots-"))
    env = {**os.environ, "BATCHINFER_HOME": str(home / "state")}
    env.pop("DAGSTER_HOME", None)
    commands = walkthrough_commands((REPO_ROOT / "README.md").read_text())
    try:
        with make_run(env, home / "make-run.log"):
            wait_until(ui_answers, "the UI of make run answering", args.timeout)
            run_walkthrough(commands, env, args.timeout)
            dagster_home = home / "state" / "dagster"
            partition = None

            def materialized() -> bool:
                nonlocal partition
                partition = latest_predictions_partition(dagster_home)
                return partition is not None

            wait_until(materialized, "the predictions materialization recorded", args.timeout)
            dismiss_community_dialog()
            args.output.mkdir(parents=True, exist_ok=True)
            for page in PAGES:
                url = f"{UI}{page.path.format(partition=partition)}"
                screenshot(chromium, url, args.output / page.image, page.window)
    except ScreenshotError as error:
        print(f"screenshots: {error}", file=sys.stderr)
        print((home / "make-run.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
