"""One wire contract, read by both sides with the protocol's own code: what the client encodes
the server's decoding (``batchinfer_protocol.predict_request``) reads back unchanged, what the
server encodes the client decodes, and a bad instance is refused on its own, named by index, while
every other text of its request is predicted: nothing is lost.

The HTTP round trip runs the real ``HttpModelClient`` against an ``httpx.MockTransport`` that
decodes with the protocol, answers with a scripted model and encodes with the protocol; no torch,
no server process (``tests/model_server/test_wire_round_trip.py`` runs the real app).
"""

from __future__ import annotations

import json

import httpx
import pytest

from batchinfer_dagster.clients.model_client import (
    HttpModelClient,
    HttpModelClientConfig,
    RefusedText,
    json_bytes,
)
from batchinfer_protocol.predict_request import (
    PredictRequest,
    RequestError,
    RequestLimits,
    decode_request,
)
from batchinfer_protocol.zero_shot import (
    InstanceError,
    Prediction,
    PredictParameters,
    decode_instance_errors,
    decode_predictions,
    encode_predictions,
    encode_request,
)

LIMITS = RequestLimits(max_instances=6, max_labels=3, default_labels=("billing", "mobile"))
PARAMETERS = PredictParameters(
    candidate_labels=("billing", "mobile"),
    multi_label=True,
    hypothesis_template="About {}.",
    label_descriptions={"billing": ("Money and invoices.",), "mobile": ("The phone app.",)},
)
DIGEST = "sha256:" + "cd" * 32


def decoded(body: object, limits: RequestLimits = LIMITS) -> PredictRequest:
    return decode_request(json_bytes(body), limits)


def scripted_answer(request: PredictRequest) -> list[Prediction]:
    """The model: the first label scores the text's length, the others share what is left."""
    labels = list(request.parameters.candidate_labels)
    return [
        Prediction(text, labels, [len(text) / 100, *([0.0] * (len(labels) - 1))])
        for text in request.texts
    ]


def test_a_client_request_decodes_on_the_server_to_what_was_encoded() -> None:
    texts = ["first", "second"]
    assert decoded(encode_request(texts, PARAMETERS)) == PredictRequest(texts, PARAMETERS)


def test_descriptions_of_labels_that_are_no_candidates_are_checked_and_dropped() -> None:
    everything = {**PARAMETERS.label_descriptions, "shipping": ("Parcels.",)}
    body = encode_request(["x"], PARAMETERS)
    body["parameters"]["label_descriptions"] = {k: list(v) for k, v in everything.items()}
    assert decoded(body).parameters == PARAMETERS
    body["parameters"]["label_descriptions"]["shipping"] = []
    with pytest.raises(RequestError, match="'label_descriptions'"):
        decoded(body)


def test_a_request_without_labels_gets_the_servers_default_labels() -> None:
    request = decoded({"instances": ["x"]})
    assert request.parameters == PredictParameters(candidate_labels=("billing", "mobile"))


@pytest.mark.parametrize(("count", "status"), [(6, None), (7, 413)])
def test_instances_per_request_at_the_limit_and_one_past(count: int, status: int | None) -> None:
    body = {"instances": [f"text {i}" for i in range(count)]}
    if status is None:
        assert len(decoded(body).texts) == count
        return
    with pytest.raises(RequestError, match="7 instances in one request; the limit is 6") as error:
        decoded(body)
    assert error.value.status_code == status


@pytest.mark.parametrize(
    ("labels", "refused"), [(["a", "b", "c"], False), (["a", "b", "c", "d"], True)]
)
def test_labels_per_request_at_the_limit_and_one_past(labels: list[str], refused: bool) -> None:
    body = {"instances": ["x"], "parameters": {"candidate_labels": labels}}
    if not refused:
        assert decoded(body).parameters.candidate_labels == tuple(labels)
        return
    with pytest.raises(RequestError, match="4 candidate labels; the limit is 3") as error:
        decoded(body)
    assert error.value.status_code == 422


def test_every_bad_instance_is_named_and_the_client_reads_each_reason() -> None:
    body = {"instances": ["fine", "", {"text": 7}, {"text": "also fine"}, "  ", None]}
    with pytest.raises(RequestError) as error:
        decoded(body)
    refusal = json.loads(json.dumps(error.value.body()))
    assert error.value.status_code == 422
    assert decode_instance_errors(refusal) == [
        InstanceError(1, "instances[1] has an empty text"),
        InstanceError(2, "instances[2] must be a string or {'text': string}, got {'text': 7}"),
        InstanceError(4, "instances[4] has an empty text"),
        InstanceError(5, "instances[5] must be a string or {'text': string}, got None"),
    ]
    assert refusal["error"].startswith("4 of 6 instances refused")


def test_a_server_answer_decodes_on_the_client_unchanged() -> None:
    predictions = scripted_answer(decoded(encode_request(["one", "two"], PARAMETERS)))
    body = json.loads(json.dumps(encode_predictions(predictions, "org/model", DIGEST)))
    assert decode_predictions(body, expected=2) == predictions


class ScriptedServer:
    """``POST /predict`` answered with the protocol's decoding and encoding around a scripted
    model; keeps the texts of every request it received."""

    def __init__(self) -> None:
        self.received: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        try:
            decoded_request = decode_request(request.content, LIMITS)
        except RequestError as error:
            self.received.append(json.loads(request.content)["instances"])
            return httpx.Response(error.status_code, json=error.body())
        self.received.append(decoded_request.texts)
        answer = encode_predictions(scripted_answer(decoded_request), "org/model", DIGEST)
        return httpx.Response(200, json=answer)


def test_through_the_client_each_bad_text_is_refused_alone_and_nothing_is_lost() -> None:
    server = ScriptedServer()
    config = HttpModelClientConfig(
        url="http://model.test", timeout_seconds=5, chunk_size=100, max_request_bytes=10_000
    )
    client = HttpModelClient(config)
    client.client = httpx.Client(transport=httpx.MockTransport(server))
    texts = ["refund me", "", "app crashes", "   ", "a\ud800b", "login fails"]

    answer = client.predict(texts, PARAMETERS)

    assert answer.model == "org/model"
    assert answer.model_digest == DIGEST
    assert answer.answers == [
        Prediction("refund me", ["billing", "mobile"], [0.09, 0.0]),
        RefusedText("instances[1] has an empty text"),
        Prediction("app crashes", ["billing", "mobile"], [0.11, 0.0]),
        RefusedText("instances[3] has an empty text"),
        RefusedText(
            "the text is not valid Unicode (surrogates not allowed at character 1), "
            "so it cannot be sent"
        ),
        Prediction("login fails", ["billing", "mobile"], [0.11, 0.0]),
    ]
    # The lone surrogate never left the client; the refused texts were not sent again.
    assert server.received == [
        ["refund me", "", "app crashes", "   ", "login fails"],
        ["refund me", "app crashes", "login fails"],
    ]
