"""The rules of the zero-shot contract both sides share, each at its bound and one past.

``batchinfer_protocol.zero_shot`` checks labels, templates and descriptions for the server and
the client's settings, and encodes and decodes the bodies. Each rule here is pinned with the
exact refusal text, the limits at their value and one past (64 labels, 16 descriptions of 1,000
characters), the rarer branches (a template that fails to parse vs one that fails to format, a
digest one character short or in capitals, refusal entries that are not objects) and the
defaults a client relies on. Written against the mutants ``tools/mutate protocol`` left alive.
"""

from __future__ import annotations

import re

import pytest

from batchinfer_protocol.zero_shot import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    DEFAULT_LABELS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_LABELS,
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_DESCRIPTION_CHARS,
    MAX_DESCRIPTIONS_PER_LABEL,
    InstanceError,
    ParameterError,
    Prediction,
    PredictParameters,
    check_hypothesis_template,
    check_label_descriptions,
    check_labels,
    decode_instance_errors,
    decode_model,
    decode_model_digest,
    decode_predictions,
    encode_predictions,
    encode_refusal,
    encode_request,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def refused(check: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(ParameterError) as caught:
        check(*args, **kwargs)  # type: ignore[operator]
    return str(caught.value)


def test_the_contracts_defaults() -> None:
    """What a client that sends no parameters, and a server left at its defaults, agree on."""
    assert DEFAULT_LABELS == ("mobile", "website", "billing", "account access")
    assert DEFAULT_HYPOTHESIS_TEMPLATE == "This example is {}."
    assert (DEFAULT_MAX_LABELS, DEFAULT_MAX_INSTANCES) == (64, 1000)
    assert DEFAULT_MAX_REQUEST_BYTES == 10 * 1024 * 1024
    assert (MAX_DESCRIPTIONS_PER_LABEL, MAX_DESCRIPTION_CHARS) == (16, 1000)
    assert PredictParameters() == PredictParameters(
        candidate_labels=DEFAULT_LABELS,
        multi_label=False,
        hypothesis_template=None,
        label_descriptions={},
    )


def test_the_label_limit_at_its_value_and_one_past() -> None:
    labels = [f"label {i}" for i in range(DEFAULT_MAX_LABELS)]
    assert check_labels(labels) == tuple(labels)
    assert refused(check_labels, [*labels, "one more"]) == (
        "65 candidate labels; the limit is 64 (MODEL_MAX_LABELS)"
    )
    assert check_labels(["a", "b"], max_labels=2) == ("a", "b")
    assert refused(check_labels, ["a", "b", "c"], max_labels=2) == (
        "3 candidate labels; the limit is 2 (MODEL_MAX_LABELS)"
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "the candidate labels are empty; give at least one label"),
        (["a", " "], "the candidate labels contain an empty label: ['a', ' ']"),
        ([""], "the candidate labels contain an empty label: ['']"),
        (
            ["b", "a", "b", "a", "c"],
            "the candidate labels repeat ['a', 'b']; give each label once",
        ),
    ],
)
def test_labels_refused_with_their_reason(labels: list[str], message: str) -> None:
    assert refused(check_labels, labels) == message


def test_a_long_label_list_is_cut_in_the_message() -> None:
    message = refused(check_labels, ["x" * 300, ""])
    assert message.startswith("the candidate labels contain an empty label: ['xxx")
    assert len(message) == len("the candidate labels contain an empty label: ") + 200


@pytest.mark.parametrize("template", ["About {}.", "{0} and {0}", "{!r} here", "{0!s}!"])
def test_templates_with_a_real_slot_are_valid(template: str) -> None:
    assert check_hypothesis_template(template) == template


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "About {.",
            "hypothesis template 'About {.' cannot be formatted with one label (ValueError: ",
        ),
        ("}", "hypothesis template '}' cannot be formatted with one label (ValueError: "),
        (
            "{}{}",
            "hypothesis template '{}{}' cannot be formatted with one label (IndexError: ",
        ),
        (
            "{1}",
            "hypothesis template '{1}' may hold the label only as '{}' or '{0}' (no name, "
            "attribute, index or format spec)",
        ),
        ("{x}", "hypothesis template '{x}' may hold the label only as '{}' or '{0}'"),
        ("{:>9}", "hypothesis template '{:>9}' may hold the label only as '{}' or '{0}'"),
        ("{0:>9}", "hypothesis template '{0:>9}' may hold the label only as '{}' or '{0}'"),
        ("{0[0]}", "hypothesis template '{0[0]}' may hold the label only as '{}' or '{0}'"),
        (
            "About {{}}.",
            "hypothesis template 'About {{}}.' gives the same hypothesis 'About {}.' for every "
            "label; write it with one '{}' where the label goes",
        ),
        ("No slot.", "hypothesis template 'No slot.' gives the same hypothesis 'No slot.'"),
    ],
)
def test_templates_refused_with_their_reason(template: str, message: str) -> None:
    got = refused(check_hypothesis_template, template)
    assert got.startswith(message)
    if "cannot be formatted" in message:
        assert got.endswith("; write it with one '{}' where the label goes")


def test_descriptions_at_their_limits_and_one_past() -> None:
    at_limit = ["d" * MAX_DESCRIPTION_CHARS] * MAX_DESCRIPTIONS_PER_LABEL
    assert check_label_descriptions({"a": at_limit}) == {"a": tuple(at_limit)}
    assert refused(check_label_descriptions, {"a": [*at_limit, "d"]}) == (
        "17 descriptions of 'a'; the limit is 16 per label"
    )
    assert refused(check_label_descriptions, {"a": ["ok", "d" * (MAX_DESCRIPTION_CHARS + 1)]}) == (
        "a description of 'a' has 1001 characters; the limit is 1000"
    )


def test_descriptions_as_one_string_or_a_list_keyed_by_label_text() -> None:
    assert check_label_descriptions({"a": "One.", "b": ["Two.", "Three."], 7: "Seven."}) == {
        "a": ("One.",),
        "b": ("Two.", "Three."),
        "7": ("Seven.",),
    }
    assert check_label_descriptions({}) == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["a"], "label descriptions must be an object {label: [description, ...]}, got ['a']"),
        ({"a": 3}, "the descriptions of 'a' must be a list of strings, got 3"),
        ({"a": ["x", 3]}, "the descriptions of 'a' must be a list of strings, got ['x', 3]"),
        (
            {"a": []},
            "the descriptions of 'a' contain an empty one: []; give at least one non-empty "
            "sentence or leave the label out",
        ),
        ({"a": ["x", " "]}, "the descriptions of 'a' contain an empty one: ['x', ' ']"),
        ({"a": ""}, "the descriptions of 'a' contain an empty one: ['']"),
    ],
)
def test_descriptions_refused_with_their_reason(raw: object, message: str) -> None:
    assert refused(check_label_descriptions, raw).startswith(message)


def test_parameters_send_only_what_differs_from_the_servers_default() -> None:
    plain = PredictParameters(candidate_labels=("a", "b"))
    assert plain.as_json() == {"candidate_labels": ["a", "b"], "multi_label": False}
    full = PredictParameters(
        candidate_labels=("a", "b"),
        multi_label=True,
        hypothesis_template="About {}.",
        label_descriptions={"b": ("B.",), "a": (), "z": ("Not a candidate.",)},
    )
    assert full.as_json() == {
        "candidate_labels": ["a", "b"],
        "multi_label": True,
        "hypothesis_template": "About {}.",
        "label_descriptions": {"b": ["B."]},
    }
    assert encode_request(["t1", "t2"], plain) == {
        "instances": ["t1", "t2"],
        "parameters": plain.as_json(),
    }


def test_predictions_round_trip_in_instance_order() -> None:
    predictions = [
        Prediction("one", ["a", "b"], [0.75, 0.25]),
        Prediction("two", ["b", "a"], [0.5, 0.5]),
    ]
    body = encode_predictions(predictions, "model-x", DIGEST)
    assert body == {
        "predictions": [
            {"sequence": "one", "labels": ["a", "b"], "scores": [0.75, 0.25]},
            {"sequence": "two", "labels": ["b", "a"], "scores": [0.5, 0.5]},
        ],
        "model": "model-x",
        "model_digest": DIGEST,
    }
    assert decode_predictions(body, 2) == predictions
    assert (decode_model(body), decode_model_digest(body)) == ("model-x", DIGEST)
    # Integer scores are read as floats.
    [read] = decode_predictions(
        {"predictions": [{"sequence": "s", "labels": ["a"], "scores": [1]}]}, 1
    )
    assert read.scores == [1.0]
    assert isinstance(read.scores[0], float)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"predictions": [{}]}, "answered 1 predictions for 2 texts"),
        ({"predictions": {}}, "answered dict predictions for 2 texts"),
        ({}, "answered NoneType predictions for 2 texts"),
        ([], "answered NoneType predictions for 2 texts"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_refused(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        decode_predictions(body, 2)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'answered without a model id ("model": None)'),
        ({"model": " "}, "answered without a model id (\"model\": ' ')"),
        ({"model": 3}, 'answered without a model id ("model": 3)'),
        ([], 'answered without a model id ("model": None)'),
    ],
)
def test_an_answer_without_a_model_id_is_refused(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        decode_model(body)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "digest",
    [
        DIGEST[:-1],  # 63 hex digits
        DIGEST + "0",  # 65
        DIGEST.upper(),
        "sha256:" + "0123456789abcdeg" * 4,
        "sha256:" + "0" * 62 + "XX",
        "md5:" + "0" * 67,
        "sha256" + "0" * 65,
        7,
    ],
)
def test_a_malformed_digest_is_refused(digest: object) -> None:
    with pytest.raises(ValueError, match="^answered a malformed model digest "):
        decode_model_digest({"model_digest": digest})


def test_a_digest_absent_or_null_is_none() -> None:
    assert decode_model_digest({}) is None
    assert decode_model_digest({"model_digest": None}) is None
    assert decode_model_digest([]) is None
    assert encode_predictions([], "m", None)["model_digest"] is None


def test_refusals_round_trip_and_skip_entries_without_an_integer_index() -> None:
    errors = [InstanceError(0, "empty"), InstanceError(3, "bad")]
    body = encode_refusal("two refused", errors)
    assert body == {
        "error": "two refused",
        "instance_errors": [{"index": 0, "reason": "empty"}, {"index": 3, "reason": "bad"}],
    }
    assert decode_instance_errors(body) == errors
    assert encode_refusal("whole request") == {"error": "whole request"}
    assert decode_instance_errors({"error": "x"}) == []
    assert decode_instance_errors({"instance_errors": {"index": 1}}) == []
    assert decode_instance_errors([]) == []
    mixed = {"instance_errors": ["x", {"index": "1", "reason": "r"}, {"index": 2, "reason": 5}]}
    assert decode_instance_errors(mixed) == [InstanceError(2, "5")]


def test_a_prediction_as_json_is_the_pipelines_shape() -> None:
    assert Prediction("s", ["a"], [1.0]).as_json() == {
        "sequence": "s",
        "labels": ["a"],
        "scores": [1.0],
    }
