"""``make run``'s Dagster instance file: a home keeps its own edits, and gets the new settings
when it has none.

``make run`` used to copy ``dagster.local.yaml`` into ``$DAGSTER_HOME/dagster.yaml`` once
(``cp -n``), so a home made before a fix kept the old settings for good: the per-step pool that
kept a killed run's slot, or no ``max_runtime_seconds`` to fail a run whose worker died with the
daemon's process group. Now the shipped file is also kept beside it as ``dagster.yaml.shipped``,
and on each start:

- no ``dagster.yaml``: the shipped file is written (``written``);
- ``dagster.yaml`` equal to the shipped file: nothing to do (``current``);
- ``dagster.yaml`` as this checkout shipped it before (equal to ``dagster.yaml.shipped``, or, in
  a home made before the record was kept, to one of ``LEGACY_SHIPPED``): never edited, so it is
  replaced, the old one kept as ``dagster.yaml.before-update`` (``updated``);
- anything else was edited by its user: it is left as it is, the new shipped file is written
  as ``dagster.yaml.new`` and a notice on stderr says what differs (``kept``).

    python -m batchinfer_tools.instance_file DAGSTER_HOME   # what `make run` runs first
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from enum import StrEnum
from pathlib import Path

from batchinfer_testing.model_server import REPO_ROOT

SHIPPED = REPO_ROOT / "dagster.local.yaml"
INSTANCE_FILE = "dagster.yaml"
SHIPPED_RECORD = "dagster.yaml.shipped"
NEW_FILE = "dagster.yaml.new"
BEFORE_UPDATE = "dagster.yaml.before-update"
# sha256 of every dagster.local.yaml `make run` copied with `cp -n` before the shipped copy was
# recorded beside it (git log -- dagster.local.yaml: 7bc34e7, bc3e28e, 649fce4). Frozen: later
# versions are recognised through dagster.yaml.shipped.
LEGACY_SHIPPED = frozenset(
    {
        "8a2c2c98f08664760ac67e552c1e3fc965eaac98d449249146af663d72e201c0",
        "cfe068be71094a265293a8d94f2d54d788deb1f2448173ac61a9734705fdff19",
        "01ed82a05cf2adc418c234bc47dd4845a806518ccfdc117edb7bbb44d787721c",
    }
)


class Outcome(StrEnum):
    WRITTEN = "written"
    CURRENT = "current"
    UPDATED = "updated"
    KEPT = "kept"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install_instance_file(dagster_home: Path, shipped: Path) -> Outcome:
    """Bring ``dagster_home/dagster.yaml`` up to ``shipped`` unless its user edited it.

    Creates ``dagster_home`` if needed. Raises ``OSError`` when a file cannot be read or
    written (the start should stop there, not run on an unknown instance file).
    """
    dagster_home.mkdir(parents=True, exist_ok=True)
    current = dagster_home / INSTANCE_FILE
    record = dagster_home / SHIPPED_RECORD
    new = shipped.read_bytes()
    if not current.exists():
        outcome = Outcome.WRITTEN
    else:
        present = current.read_bytes()
        if present == new:
            outcome = Outcome.CURRENT
        elif (record.exists() and present == record.read_bytes()) or (
            _digest(present) in LEGACY_SHIPPED
        ):
            shutil.copyfile(current, dagster_home / BEFORE_UPDATE)
            outcome = Outcome.UPDATED
        else:
            (dagster_home / NEW_FILE).write_bytes(new)
            return Outcome.KEPT
    if outcome is not Outcome.CURRENT:
        current.write_bytes(new)
    if not record.exists() or record.read_bytes() != new:
        record.write_bytes(new)
    (dagster_home / NEW_FILE).unlink(missing_ok=True)
    return outcome


def notice(dagster_home: Path, outcome: Outcome) -> str | None:
    """The line to print for ``outcome``; None when there is nothing to say."""
    if outcome is Outcome.UPDATED:
        return (
            f"{dagster_home / INSTANCE_FILE} updated to this checkout's dagster.local.yaml "
            f"(it had no edits of yours; the old one is {dagster_home / BEFORE_UPDATE})"
        )
    if outcome is Outcome.KEPT:
        return (
            f"{dagster_home / INSTANCE_FILE} has edits of yours and is kept, but it is not this "
            f"checkout's dagster.local.yaml, whose settings are now in {dagster_home / NEW_FILE}:"
            f" merge them (diff the two files), or move that file over it to take the new one"
        )
    return None


def main(argv: list[str] | None = None, shipped: Path = SHIPPED) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m batchinfer_tools.instance_file DAGSTER_HOME", file=sys.stderr)
        return 2
    home = Path(args[0])
    line = notice(home, install_instance_file(home, shipped))
    if line:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
