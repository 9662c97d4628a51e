"""The model server's reading of a ``POST /predict`` body, rule by rule, with the exact refusal.

Each rule of ``batchinfer_protocol.predict_request`` at its value and one past, the status code
and the text a client gets, and the rarer branches (a comma-separated label string, a template
of exactly the description limit, descriptions of labels that are not candidates, a lone
surrogate in each place a string can come). Written against the mutants ``tools/mutate
protocol`` left alive: a refusal whose text or status changed, a bound off by one, a default
label set or a ``multi_label`` default swapped.
"""

from __future__ import annotations

import json
import re

import pytest

from batchinfer_protocol.predict_request import (
    KNOWN_PARAMETERS,
    PredictRequest,
    RequestError,
    RequestLimits,
    brief,
    check_encodable,
    decode_request,
    instance_text,
    parse_label_descriptions,
    parse_labels,
    parse_parameters,
    parse_template,
)
from batchinfer_protocol.zero_shot import (
    MAX_DESCRIPTION_CHARS,
    InstanceError,
    PredictParameters,
)

LIMITS = RequestLimits(max_instances=3, max_labels=2, default_labels=("billing", "mobile"))
LONE_SURROGATE = "\ud800"


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def refusal(raw: bytes, limits: RequestLimits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as caught:
        decode_request(raw, limits)
    return caught.value


def parameter_refusal(raw: object) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_parameters(raw, LIMITS)
    return caught.value


def test_a_body_without_parameters_gets_the_servers_defaults() -> None:
    assert decode_request(body({"instances": ["a", {"text": "b"}]}), LIMITS) == PredictRequest(
        texts=["a", "b"],
        parameters=PredictParameters(
            candidate_labels=("billing", "mobile"),
            multi_label=False,
            hypothesis_template=None,
            label_descriptions={},
        ),
    )


def test_a_body_with_every_parameter_is_read_back() -> None:
    request = decode_request(
        body(
            {
                "instances": ["a"],
                "parameters": {
                    "candidate_labels": ["x", "y"],
                    "multi_label": True,
                    "hypothesis_template": "About {}.",
                    "label_descriptions": {"y": "Why.", "z": ["Not a candidate."]},
                },
            }
        ),
        LIMITS,
    )
    assert request.parameters == PredictParameters(
        candidate_labels=("x", "y"),
        multi_label=True,
        hypothesis_template="About {}.",
        label_descriptions={"y": ("Why.",)},
    )
    known = {"candidate_labels", "multi_label", "hypothesis_template", "label_descriptions"}
    assert known == KNOWN_PARAMETERS


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"[1]", 400, "the body must be a JSON object, got list"),
        (b'"text"', 400, "the body must be a JSON object, got str"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "the body nests JSON too deeply"),
        (b"{}", 422, "'instances' must be a non-empty list of texts or {'text': ...}"),
        (body({"instances": []}), 422, "'instances' must be a non-empty list"),
        (body({"instances": "a"}), 422, "'instances' must be a non-empty list"),
    ],
    ids=["list", "string", "too-deep", "no-instances", "empty", "not-a-list"],
)
def test_a_malformed_body_is_refused_whole(raw: bytes, status: int, message: str) -> None:
    error = refusal(raw)
    assert (error.status_code, error.instance_errors) == (status, [])
    assert error.message.startswith(message)
    assert str(error) == error.message
    assert error.body() == {"error": error.message}


def test_a_body_that_is_not_json_names_the_parser_error() -> None:
    error = refusal(b"{")
    assert error.status_code == 400
    assert error.message.startswith("the body is not valid JSON: Expecting property name")
    assert refusal(b"\xff").message.startswith("the body is not valid JSON: ")


def test_the_instance_limit_at_its_value_and_one_past() -> None:
    assert decode_request(body({"instances": ["a", "b", "c"]}), LIMITS).texts == ["a", "b", "c"]
    error = refusal(body({"instances": ["a", "b", "c", "d"]}))
    assert error.status_code == 413
    assert error.message == (
        "4 instances in one request; the limit is 3 (MODEL_MAX_INSTANCES): split the request"
    )


def test_bad_instances_are_named_each_and_the_others_are_said_to_be_valid() -> None:
    error = refusal(body({"instances": ["good", 7, {"text": " "}, {"txt": "x"}]}), LIMITS)
    assert error.status_code == 413  # four instances: the count is checked first
    error = refusal(
        body({"instances": ["good", 7, {"text": " "}]}),
        RequestLimits(max_instances=5, max_labels=2, default_labels=("a",)),
    )
    reasons = [
        InstanceError(1, "instances[1] must be a string or {'text': string}, got 7"),
        InstanceError(2, "instances[2] has an empty text"),
    ]
    assert (error.status_code, error.instance_errors) == (422, reasons)
    assert error.message == (
        "2 of 3 instances refused, e.g. instances[1] must be a string or {'text': string}, got 7;"
        " the others are valid: resend them without the instances in 'instance_errors'"
    )
    assert error.body() == {
        "error": error.message,
        "instance_errors": [
            {"index": 1, "reason": reasons[0].reason},
            {"index": 2, "reason": reasons[1].reason},
        ],
    }


def test_parameters_are_checked_before_the_instances() -> None:
    error = refusal(body({"instances": [7], "parameters": {"multi_label": 1}}))
    assert (error.status_code, error.instance_errors) == (422, [])
    assert error.message == "'multi_label' must be true or false, got 1"


@pytest.mark.parametrize(
    ("instance", "reason"),
    [
        ({"txt": "a"}, "instances[4] must be a string or {'text': string}, got {'txt': 'a'}"),
        ({"text": 1}, "instances[4] must be a string or {'text': string}, got {'text': 1}"),
        (None, "instances[4] must be a string or {'text': string}, got None"),
        ("", "instances[4] has an empty text"),
        ("\t\n ", "instances[4] has an empty text"),
        ({"text": " "}, "instances[4] has an empty text"),
        (
            "ok" + LONE_SURROGATE,
            "instances[4] is not valid Unicode (surrogates not allowed at character 2)",
        ),
    ],
)
def test_an_instance_is_refused_with_its_reason(instance: object, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        instance_text(instance, 4)
    assert str(caught.value) == reason


def test_an_instance_keeps_its_text_exactly() -> None:
    assert instance_text(" padded ", 0) == " padded "
    assert instance_text({"text": "x", "other": 1}, 0) == "x"
    assert check_encodable("é", "here") == "é"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1], "'parameters' must be an object, got [1]"),
        ("x", "'parameters' must be an object, got 'x'"),
        (
            {"labels": [], "b": 1},
            "unknown parameters ['b', 'labels']; known are ['candidate_labels', "
            "'hypothesis_template', 'label_descriptions', 'multi_label']",
        ),
        ({"multi_label": "true"}, "'multi_label' must be true or false, got 'true'"),
        ({"multi_label": None}, "'multi_label' must be true or false, got None"),
    ],
)
def test_parameters_refused_with_their_reason(raw: object, message: str) -> None:
    error = parameter_refusal(raw)
    assert (error.status_code, error.message) == (422, message)


def test_multi_label_false_is_kept_false_and_true_true() -> None:
    assert parse_parameters({"multi_label": False}, LIMITS).multi_label is False
    assert parse_parameters({"multi_label": True}, LIMITS).multi_label is True
    assert parse_parameters({}, LIMITS) == parse_parameters(None, LIMITS)


@pytest.mark.parametrize(
    ("raw", "labels"),
    [
        ("billing, mobile", ("billing", "mobile")),
        (" a ,, b ,", ("a", "b")),
        (["a"], ("a",)),
        (["a", "b"], ("a", "b")),  # at the limit of 2
    ],
)
def test_labels_as_a_list_or_a_comma_separated_string(raw: object, labels: tuple) -> None:
    assert parse_labels(raw, LIMITS) == labels


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["a", "b", "c"], "'candidate_labels': 3 candidate labels; the limit is 2"),
        ("a,b,c", "'candidate_labels': 3 candidate labels; the limit is 2"),
        ([], "'candidate_labels': the candidate labels are empty"),
        (" , ", "'candidate_labels': the candidate labels are empty"),
        (["a", 1], "'candidate_labels' must be a list of strings, got ['a', 1]"),
        (7, "'candidate_labels' must be a list of strings, got 7"),
        (
            ["a" + LONE_SURROGATE],
            "'candidate_labels': a candidate label is not valid Unicode (surrogates not "
            "allowed at character 1)",
        ),
        (["a", "a"], "'candidate_labels': the candidate labels repeat ['a']"),
    ],
)
def test_labels_refused_with_their_reason(raw: object, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_labels(raw, LIMITS)
    assert caught.value.status_code == 422
    assert caught.value.message.startswith(message)


def test_the_template_at_the_description_limit_and_one_past() -> None:
    at_limit = "{}" + "x" * (MAX_DESCRIPTION_CHARS - 2)
    assert parse_template(at_limit) == at_limit
    with pytest.raises(RequestError) as caught:
        parse_template(at_limit + "x")
    assert (caught.value.status_code, caught.value.message) == (
        422,
        f"'hypothesis_template' has {MAX_DESCRIPTION_CHARS + 1} characters; the limit is "
        f"{MAX_DESCRIPTION_CHARS}, as for a label description",
    )
    assert parse_template(None) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (3, "'hypothesis_template' must be a string, got 3"),
        ("No slot.", "'hypothesis_template': hypothesis template 'No slot.' gives the same"),
        (
            "{}" + LONE_SURROGATE,
            "'hypothesis_template': the hypothesis template is not valid Unicode "
            "(surrogates not allowed at character 2)",
        ),
        ("{0.x}", "'hypothesis_template': hypothesis template '{0.x}' may hold the label only"),
    ],
)
def test_templates_refused_with_their_reason(raw: object, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_template(raw)
    assert caught.value.status_code == 422
    assert caught.value.message.startswith(message)


def test_descriptions_keep_the_candidates_in_label_order() -> None:
    raw = {"b": ["B one", "B two"], "a": "A", "z": "Not a candidate"}
    assert parse_label_descriptions(raw, ("a", "b", "c")) == {
        "a": ("A",),
        "b": ("B one", "B two"),
    }
    assert list(parse_label_descriptions(raw, ("b", "a"))) == ["b", "a"]
    assert parse_label_descriptions(None, ("a",)) == {}
    assert parse_label_descriptions({}, ("a",)) == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "'label_descriptions': label descriptions must be an object"),
        ({"a": [""]}, "'label_descriptions': the descriptions of 'a' contain an empty one"),
        (
            {"z": ["fine", "bad" + LONE_SURROGATE]},
            "'label_descriptions': a label description is not valid Unicode (surrogates not "
            "allowed at character 3)",
        ),
    ],
)
def test_descriptions_refused_with_their_reason(raw: object, message: str) -> None:
    """Checked whole, even the entries of labels that are not candidates."""
    with pytest.raises(RequestError) as caught:
        parse_label_descriptions(raw, ("a",))
    assert caught.value.status_code == 422
    assert caught.value.message.startswith(message)


def test_a_clients_value_in_a_message_is_bounded() -> None:
    assert brief([[[[[1]]]]]) == "[[[[...]]]]"
    assert brief({"a": {"b": {"c": {"d": 1}}}}) == "{'a': {'b': {'c': {...}}}}"
    long_text = brief("x" * 200)
    assert len(long_text) == 80
    assert "..." in long_text
    assert brief("x" * 78) == repr("x" * 78)  # 80 characters with its quotes: kept whole
    assert brief(10**100) == "100000000000000000...0000000000000000000"
    assert brief(10**38) == str(10**38)  # 39 digits: kept whole

    class Loud:
        def __repr__(self) -> str:
            return "o" * 200

    assert len(brief(Loud())) == 80
