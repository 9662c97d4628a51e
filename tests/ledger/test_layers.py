"""The ledger is the bottom of the domain: it imports neither Dagster nor a client.

Each check imports the package in a fresh interpreter where the blocked modules cannot be found
(a ``sys.meta_path`` finder refusing them), so a new import of Dagster or of a client anywhere
under ``batchinfer_dagster.ledger`` (or ``prediction``) fails here, lazy or not at import time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

DAGSTER = ["dagster", "dagster_gcp", "dagster_postgres"]
GOOGLE = ["google", "grpc"]
# Every client module: the ledger and the prediction own the types they consume
# (messages.ReceivedMessage; prediction's TextSource and Classifier Protocols) and take
# collaborators as callables (replay's publish).
CLIENTS = ["batchinfer_dagster.clients"]

PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    blocked = {blocked!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ImportError(f"blocked by the layering test: {{name}}")
            return None

    # Namespace packages (google) that site's .pth files load at start-up are not ours to count.
    before = set(sys.modules)
    sys.meta_path.insert(0, Refuse())
    module = importlib.import_module({module!r})
    loaded = [
        m for m in set(sys.modules) - before
        if any(m == b or m.startswith(b + ".") for b in blocked)
    ]
    assert not loaded, loaded
    print("imported", module.__name__)
    """
)


def import_blocking(module: str, blocked: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, blocked=blocked)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("batchinfer_dagster.ledger", DAGSTER + GOOGLE + CLIENTS),
        ("batchinfer_dagster.ledger.batch_keys", DAGSTER + GOOGLE + CLIENTS),
        ("batchinfer_dagster.prediction", DAGSTER + GOOGLE + CLIENTS),
        ("batchinfer_dagster.rollout", DAGSTER + GOOGLE + CLIENTS),
        ("batchinfer_dagster.prediction_changes", DAGSTER + GOOGLE + CLIENTS),
    ],
)
def test_the_domain_imports_without_dagster_or_clients(module: str, blocked: list[str]) -> None:
    result = import_blocking(module, blocked)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {module}" in result.stdout


def test_the_probe_refuses_what_it_blocks() -> None:
    """The check can fail: the Dagster layer's partitions cannot be imported without Dagster."""
    result = import_blocking("batchinfer_dagster.defs.partitions", DAGSTER)
    assert result.returncode != 0
    assert "blocked by the layering test: dagster" in result.stderr
