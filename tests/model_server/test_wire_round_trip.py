"""One wire contract both ways: what the client encodes the server decodes, and what the server
encodes the client decodes, through the protocol's own functions on each side."""

from __future__ import annotations

import json

from batchinfer_protocol.predict_request import decode_request
from batchinfer_protocol.zero_shot import (
    Prediction,
    PredictParameters,
    decode_model,
    decode_model_digest,
    decode_predictions,
    encode_predictions,
    encode_request,
)
from model_server.instances import instances_of
from model_server.settings import ServerSettings

DIGEST = "sha256:" + "ab" * 32


def test_a_client_request_decodes_on_the_server_with_every_parameter() -> None:
    parameters = PredictParameters(
        candidate_labels=("billing", "mobile"),
        multi_label=True,
        hypothesis_template="About {}.",
        label_descriptions={"billing": ("Money and invoices.",), "other": ("unused",)},
    )
    body = json.dumps(encode_request(["first", "second"], parameters)).encode()

    settings = ServerSettings()
    request = decode_request(body, settings.request_limits)
    instances = instances_of(request, settings.model_max_label_chars)

    assert [instance.text for instance in instances] == ["first", "second"]
    for instance in instances:
        assert instance.labels == ("billing", "mobile")
        assert instance.multi_label is True
        assert instance.hypothesis_template == "About {}."
        assert instance.label_descriptions == (("Money and invoices.",), ())


def test_a_server_answer_decodes_on_the_client_unchanged() -> None:
    backend_rows = [
        Prediction("first", ["billing", "mobile"], [0.75, 0.25]),
        Prediction("second", ["mobile", "billing"], [0.5, 0.5]),
    ]

    body = json.loads(json.dumps(encode_predictions(backend_rows, "org/model", DIGEST)))

    assert decode_predictions(body, expected=2) == [
        Prediction("first", ["billing", "mobile"], [0.75, 0.25]),
        Prediction("second", ["mobile", "billing"], [0.5, 0.5]),
    ]
    assert decode_model(body) == "org/model"
    assert decode_model_digest(body) == DIGEST
    assert decode_model_digest(encode_predictions([], "org/model", None)) is None
