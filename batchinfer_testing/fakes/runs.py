"""A dict-backed ``ledger.CurrentRuns``: what Dagster knows of each batch's run, set by a test.

``ledger.reconcile`` asks its ``current_runs`` callable about the batches it considers; the
sensor answers from the Dagster instance. This answers from ``states`` and keeps every question,
so a test can script a finished, failed or missing run without an instance and check what was
asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from batchinfer_dagster import ledger


@dataclass
class DictRuns:
    """``states``: batch key -> its run's state; a batch not in it has no run."""

    states: dict[str, ledger.RunState] = field(default_factory=dict)
    asked: list[list[str]] = field(default_factory=list)

    def __call__(self, batches: Sequence[ledger.BatchState]) -> dict[str, ledger.RunState]:
        self.asked.append([batch.batch_key for batch in batches])
        return {
            b.batch_key: self.states[b.batch_key] for b in batches if b.batch_key in self.states
        }
