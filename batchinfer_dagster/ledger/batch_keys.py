"""Ledger batch keys: ``YYYYMMDDTHHMMSSZ-<8 hex>``, the key of a batch and of its partition.

The ledger makes them (``intake.create_batches``); the Dagster layer uses the same string as the
partition key of ``predictions`` (``partitions.py``), so the domain, not Dagster, owns the format.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

BATCH_KEY_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def new_batch_key(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sortable by time, unique by the random suffix.

    A key made from a time sorts before every key made later, so ``new_batch_key(cutoff)``
    bounds "batches created before ``cutoff``" (retention).
    """
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware UTC datetime")
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
