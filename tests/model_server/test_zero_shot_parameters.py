"""The label_descriptions and hypothesis_template parameters: what the server accepts and refuses.

A refused parameter is a 422 whose text names the parameter and what is wrong, before any of
the request reaches a model batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from batchinfer_protocol.zero_shot import (
    MAX_DESCRIPTION_CHARS,
    MAX_DESCRIPTIONS_PER_LABEL,
    ParameterError,
    PredictParameters,
    check_hypothesis_template,
    check_label_descriptions,
)
from model_server.app import create_app
from model_server.backends.embedding import EmbeddingBackend
from model_server.settings import ServerSettings


@pytest.fixture
def client(embedding_backend: EmbeddingBackend) -> Iterator[TestClient]:
    app = create_app(ServerSettings(), backend=embedding_backend, load_on_startup=False)
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "template",
    ["This example is {}.", "{}", "{0}", "This example is {0}.", "{!r} it is", "{0}, or {0}"],
)
def test_templates_that_give_each_label_its_own_hypothesis_are_valid(template: str) -> None:
    assert check_hypothesis_template(template) == template


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("This text is about {{}}.", "same hypothesis 'This text is about {}.' for every label"),
        ("No slot.", "same hypothesis 'No slot.' for every label"),
        # Format specs are refused outright: "{:>999999999}" would make every label a gigabyte.
        ("{:.0}", "no name, attribute, index or format spec"),
        ("{:>12}", "no name, attribute, index or format spec"),
        ("{0} {1}", "no name, attribute, index or format spec"),
        ("{label}", "no name, attribute, index or format spec"),
        ("{0.__class__}", "no name, attribute, index or format spec"),
        ("{} or {}", "cannot be formatted with one label (IndexError"),
        ("{", "cannot be formatted with one label (ValueError"),
    ],
)
def test_templates_without_a_real_slot_are_refused(template: str, reason: str) -> None:
    with pytest.raises(ParameterError, match="hypothesis template") as refused:
        check_hypothesis_template(template)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("template", "status"),
    [("This example is {0}.", 200), ("This text is about {{}}.", 422), ("No slot.", 422)],
)
def test_the_server_applies_the_template_rule(
    client: TestClient, template: str, status: int
) -> None:
    body = {"instances": ["my invoice is wrong"], "parameters": {"hypothesis_template": template}}
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    if status == 422:
        assert "'hypothesis_template'" in response.json()["error"]
        assert "same hypothesis" in response.json()["error"]


def test_descriptions_at_their_limits_are_accepted() -> None:
    longest = "x" * MAX_DESCRIPTION_CHARS
    descriptions = check_label_descriptions(
        {"a": [longest] * MAX_DESCRIPTIONS_PER_LABEL, "b": "one string is one description"}
    )
    assert descriptions == {
        "a": (longest,) * MAX_DESCRIPTIONS_PER_LABEL,
        "b": ("one string is one description",),
    }


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (["a", "b"], "must be an object"),
        ({"a": [1]}, "descriptions of 'a' must be a list of strings"),
        ({"a": {"x": "y"}}, "descriptions of 'a' must be a list of strings"),
        ({"a": []}, "contain an empty one"),
        ({"a": ["fine", "  "]}, "contain an empty one"),
        ({"a": ["d"] * (MAX_DESCRIPTIONS_PER_LABEL + 1)}, f"limit is {MAX_DESCRIPTIONS_PER_LABEL}"),
        ({"a": ["x" * (MAX_DESCRIPTION_CHARS + 1)]}, f"limit is {MAX_DESCRIPTION_CHARS}"),
    ],
)
def test_malformed_descriptions_are_refused_with_the_reason(
    client: TestClient, raw: object, reason: str
) -> None:
    with pytest.raises(ParameterError) as refused:
        check_label_descriptions(raw)
    assert reason in str(refused.value)
    body = {"instances": ["hello"], "parameters": {"label_descriptions": raw}}
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert response.json()["error"].startswith("'label_descriptions': ")
    assert reason in response.json()["error"]


def test_descriptions_of_labels_that_are_not_candidates_are_ignored(client: TestClient) -> None:
    parameters = {"candidate_labels": ["billing", "mobile"]}
    plain = client.post("/predict", json={"instances": ["refund please"], "parameters": parameters})
    described = client.post(
        "/predict",
        json={
            "instances": ["refund please"],
            "parameters": {
                **parameters,
                "label_descriptions": {"shipping": ["Where is my parcel?"]},
            },
        },
    )
    assert described.status_code == 200, described.text
    assert described.json()["predictions"] == plain.json()["predictions"]


def test_request_descriptions_decide_the_label(client: TestClient) -> None:
    """Two labels with names that mean nothing: only their descriptions can tell them apart."""
    texts = [
        "I was billed twice for one order.",
        "The app closes itself when I open it on my phone.",
    ]
    labels = ["kind A", "kind B"]
    descriptions = {
        "kind A": ["A question about a charge, a refund or an invoice."],
        "kind B": ["The mobile app crashes or freezes."],
    }
    for described, expected in (
        (descriptions, ["kind A", "kind B"]),
        (
            {"kind A": descriptions["kind B"], "kind B": descriptions["kind A"]},
            ["kind B", "kind A"],
        ),
    ):
        body = {
            "instances": texts,
            "parameters": {"candidate_labels": labels, "label_descriptions": described},
        }
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        assert [p["labels"][0] for p in response.json()["predictions"]] == expected


def test_request_descriptions_replace_the_shipped_ones(client: TestClient) -> None:
    text = "The app closes itself when I open it on my phone."
    labels = ["billing", "website"]
    shipped = client.post(
        "/predict", json={"instances": [text], "parameters": {"candidate_labels": labels}}
    )
    assert shipped.json()["predictions"][0]["labels"][0] == "website"
    redescribed = client.post(
        "/predict",
        json={
            "instances": [text],
            "parameters": {
                "candidate_labels": labels,
                "label_descriptions": {"billing": ["The mobile app crashes on my phone."]},
            },
        },
    )
    assert redescribed.json()["predictions"][0]["labels"][0] == "billing"


def test_parameters_send_only_the_candidates_descriptions() -> None:
    parameters = PredictParameters(
        candidate_labels=("billing", "mobile"),
        label_descriptions={"billing": ("Charges and refunds.",), "shipping": ("Parcels.",)},
    )
    assert parameters.as_json() == {
        "candidate_labels": ["billing", "mobile"],
        "multi_label": False,
        "label_descriptions": {"billing": ["Charges and refunds."]},
    }
    assert "label_descriptions" not in PredictParameters(("mobile",)).as_json()
    assert "hypothesis_template" not in PredictParameters(("mobile",)).as_json()
