"""Run isolation: one record never takes its batch down, on the real model server.

A long record is predicted on its truncated tokens (the stored text and the answer's
``sequence`` stay whole); a record the server refuses, or one too large to send at all, is
dead-lettered alone (source ``model``) with the reason, and the batch's other records are predicted.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.model_client import (
    PredictParameters,
    RefusedText,
    json_bytes,
)
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import (
    local_feature_store,
    model_client_of,
    publish_json,
    rows,
)

LONG_TEXT = ("my invoice shows a double charge " * 3100)[:100_002]


def test_a_100002_character_record_is_predicted_with_its_batch(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """Issue example 2: it used to answer 422 and dead-letter all three records."""
    local_feature_store(pipeline_settings).upsert(
        [(1, "the app crashes on my phone"), (2, LONG_TEXT), (3, "I cannot log in")]
    )
    publish_json(pipeline_settings, [{"id": 1}, {"id": 2}, {"id": 3}])

    report = run_daemon_loop(instance, pipeline_settings)

    assert [run.success for run in report.runs] == [True]
    predictions = {row.record_id: row for row in rows(pipeline_settings, db.predictions)}
    assert sorted(predictions) == [1, 2, 3]
    assert len(LONG_TEXT) == 100_002
    assert predictions[2].sequence == LONG_TEXT  # the answer names the whole text
    assert predictions[2].labels[0] == "billing"  # its head decided: truncation, not refusal
    assert rows(pipeline_settings, db.dead_letters) == []


def test_a_record_too_large_to_send_is_dead_lettered_alone_without_sending_it(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    settings = pipeline_settings.model_copy(update={"model_max_request_bytes": 4096})
    client = model_client_of(settings)
    assert client.max_request_bytes == 4096
    parameters = PredictParameters(settings.labels)
    room = 4096 - client.request_overhead_bytes(parameters)
    fits = "a" * (room - 3)  # quotes and separator: a body of exactly the request limit
    over = fits + "b"  # one byte past it
    assert client.instance_bytes(fits) == room
    assert len(json_bytes({"instances": [fits], "parameters": parameters.as_json()})) == 4096
    client.close()
    local_feature_store(settings).upsert([(1, "refund please"), (2, over), (3, fits)])
    publish_json(settings, [{"id": 1}, {"id": 2}, {"id": 3}])

    report = run_daemon_loop(instance, settings)

    assert [run.success for run in report.runs] == [True]
    assert sorted(row.record_id for row in rows(settings, db.predictions)) == [1, 3]
    (letter,) = rows(settings, db.dead_letters)
    assert (letter.source, letter.record_id) == (ledger.DeadLetterSource.MODEL, 2)
    assert "holds at most 4096 bytes, so it cannot be sent" in letter.reason


def test_the_client_resends_exactly_the_instances_the_server_did_not_refuse(
    model_server_url: str,
) -> None:
    client = model_client_of(Settings(), url=model_server_url)
    texts = ["refund my order", "", "app crash", "  \n ", "password reset", "\ud800 lone"]
    try:
        answers = client.predict(texts, PredictParameters(("billing", "mobile", "account"))).answers
    finally:
        client.close()

    refused = {i: a.reason for i, a in enumerate(answers) if isinstance(a, RefusedText)}
    assert sorted(refused) == [1, 3, 5]
    assert "has an empty text" in refused[1]
    assert "has an empty text" in refused[3]
    assert "not valid Unicode" in refused[5]
    predicted = [a.sequence for a in answers if not isinstance(a, RefusedText)]
    assert predicted == ["refund my order", "app crash", "password reset"]


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port``, from the kernel's table (Linux)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: TCP_LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def test_the_model_server_listens_on_loopback_by_default(model_server_url: str) -> None:
    """The session's server is started without MODEL_HOST, as `make run` starts it."""
    assert "MODEL_HOST" not in os.environ
    port = int(model_server_url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}
