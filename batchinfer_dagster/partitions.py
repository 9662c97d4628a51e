"""The dynamic partitions of ``predictions``: one partition per ledger batch (docs/architecture.md).

A partition per record would pass Dagster's comfortable limit (~100k keys) within days; a batch of
up to ``BATCHINFER_BATCH_SIZE`` requests keeps the key count small. Keys sort by creation time.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from dagster import DynamicPartitionsDefinition

PREDICTION_BATCHES = "prediction_batches"

prediction_batches = DynamicPartitionsDefinition(name=PREDICTION_BATCHES)

BATCH_KEY_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def new_batch_key(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sortable by time, unique by the random suffix."""
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware UTC datetime")
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
