"""Which BigQuery failures the export tries again: the answers as the client raises them."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from batchinfer_dagster.clients.bigquery_jobs import is_transient


def answer(code: int, reason: str | None) -> gexc.GoogleAPICallError:
    errors = [] if reason is None else [{"reason": reason, "message": "m"}]
    return gexc.from_http_status(code, "m", errors=errors)


@pytest.mark.parametrize(
    ("code", "reason", "transient"),
    [
        (500, "backendError", True),
        (503, None, True),
        (429, None, True),
        (502, "badGateway", True),
        # BigQuery answers a rate limit 403; a daily quota and a refusal are 403 too.
        (403, "rateLimitExceeded", True),
        (403, "quotaExceeded", False),
        (403, "accessDenied", False),
        (403, None, False),
        (404, "notFound", False),
        (400, "invalidQuery", False),
    ],
)
def test_only_server_errors_and_rate_limits_are_transient(
    code: int, reason: str | None, transient: bool
) -> None:
    assert is_transient(answer(code, reason)) is transient


def test_the_clients_retries_run_out_is_transient_and_other_errors_are_not() -> None:
    assert is_transient(gexc.RetryError("deadline", cause=answer(503, None)))
    assert not is_transient(ValueError("a bug"))
