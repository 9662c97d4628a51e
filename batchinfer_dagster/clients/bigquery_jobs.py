"""BigQuery jobs shared by the feature import and the prediction export: a spooled file loaded
into a staging table of the caller's own, and which failures are worth another try.

Both write a target table the same way: rows spooled as newline-delimited JSON on disk (memory
stays bounded), loaded into a staging table (a load job: no query bytes, no streaming buffer
that DML cannot touch) in the dataset ``<target dataset>_staging`` (Terraform creates it beside
the target's with a one-day table expiration), merged, and the staging table dropped.

What the client already retries (google-cloud-bigquery 3.x, ``bigquery.retry``): every API
call answered 429, 500, 502 or 503, or with reason ``rateLimitExceeded``/``backendError``/
``internalError``/``badGateway``, for up to 10 minutes (``DEFAULT_RETRY``); a query job that
failed with ``jobBackendError``/``jobInternalError``/``jobRateLimitExceeded`` is started again
for up to 20 minutes (``DEFAULT_JOB_RETRY``, ``query_and_wait`` only). A load job that BigQuery
ran and failed is not retried by the client: its error reaches the caller.
"""

from __future__ import annotations

import uuid
from typing import IO

from google.api_core import exceptions as gexc
from google.cloud import bigquery

STAGING_DATASET_SUFFIX = "_staging"

# BigQuery's error reasons of a failure that another try may not meet ("Troubleshoot errors",
# BigQuery documentation: backendError, internalError, rateLimitExceeded, badGateway and the
# jobs' own forms). A rate limit is answered 403 with reason rateLimitExceeded; quotaExceeded
# (a daily quota) is also 403 and is not transient.
TRANSIENT_REASONS = frozenset(
    {
        "backendError",
        "internalError",
        "rateLimitExceeded",
        "badGateway",
        "jobBackendError",
        "jobInternalError",
        "jobRateLimitExceeded",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed BigQuery call may succeed if tried again: a 5xx or 429 answer, or one of
    ``TRANSIENT_REASONS``; a refusal (403 accessDenied, 404, 400 invalid) is not."""
    if isinstance(exc, gexc.RetryError):
        return True  # the client's own retries ran out on transient answers
    if not isinstance(exc, gexc.GoogleAPICallError):
        return False
    reasons = {error.get("reason") for error in exc.errors if isinstance(error, dict)}
    if reasons & TRANSIENT_REASONS:
        return True
    if reasons - {None}:
        return False
    return isinstance(exc, gexc.ServerError | gexc.TooManyRequests)


def staging_table(target: bigquery.TableReference) -> bigquery.TableReference:
    """A table no other job uses (a uuid in its name), in the staging dataset beside the
    target's; the caller drops it after its merge, the dataset's expiration is the fallback."""
    dataset = bigquery.DatasetReference(target.project, target.dataset_id + STAGING_DATASET_SUFFIX)
    return dataset.table(f"{target.table_id}_{uuid.uuid4().hex}")


def load_spool(
    client: bigquery.Client,
    spool: IO[bytes],
    table: bigquery.TableReference,
    *,
    schema: tuple[bigquery.SchemaField, ...],
    disposition: str,
    timeout_seconds: float,
) -> None:
    """Load the newline-delimited JSON written to ``spool`` (its position is the end) into
    ``table`` and wait up to ``timeout_seconds`` for the job.

    Raises the client's ``GoogleAPICallError`` (the upload's or the failed job's): the caller
    names what it was loading and what to check.
    """
    size = spool.tell()
    spool.seek(0)
    config = bigquery.LoadJobConfig(
        schema=list(schema),
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        write_disposition=disposition,
    )
    job = client.load_table_from_file(spool, table, job_config=config, size=size)
    job.result(timeout=timeout_seconds)
