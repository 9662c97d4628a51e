"""The dynamic partitions of ``predictions``: one partition per ledger batch (docs/architecture.md).

A partition per record would pass Dagster's comfortable limit (~100k keys) within days; a batch of
up to ``BATCHINFER_BATCH_SIZE`` requests keeps the key count small. A partition key is the batch
key the ledger made (``ledger/batch_keys.py``), so keys sort by creation time.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

PREDICTION_BATCHES = "prediction_batches"

prediction_batches = DynamicPartitionsDefinition(name=PREDICTION_BATCHES)
