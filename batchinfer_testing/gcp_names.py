"""The Google Cloud project and BigQuery table the tests' fakes of Google's services serve."""

from __future__ import annotations

PROJECT = "test-project"
TABLE = f"{PROJECT}.batchinfer.records"
