"""``make install`` honours ``STAMP`` from the environment: a checkout sharing another's venv.

A ``git worktree`` whose ``.venv`` links to the main checkout's venv would, with the stamp
inside that venv, reinstall it from the worktree (its ``pyproject.toml`` files are newer than
the stamp) and point the shared editable installs at the worktree. ``tools/screenshots`` and the
contributors' note rely on ``STAMP=<own file>`` in the environment reaching ``make`` (and the
``make run`` it starts). Dry runs (``make -n``): nothing is installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from batchinfer_testing.model_server import REPO_ROOT


def dry_run_install(stamp: Path) -> str:
    """What ``make -n install`` would run with ``STAMP`` set in the environment only."""
    return subprocess.run(
        ["make", "-n", "install"],
        cwd=REPO_ROOT,
        env={**os.environ, "STAMP": str(stamp)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_fresh_stamp_from_the_environment_installs_nothing(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp"
    stamp.touch()
    assert "pip install" not in dry_run_install(stamp)


def test_a_missing_stamp_from_the_environment_is_the_one_make_would_create(
    tmp_path: Path,
) -> None:
    stamp = tmp_path / "missing"
    commands = dry_run_install(stamp)
    assert "pip install" in commands
    assert f"touch {stamp}" in commands
