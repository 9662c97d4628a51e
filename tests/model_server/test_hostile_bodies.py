"""Every malformed /predict body is a 4xx with a JSON error, never a 500; limits pinned.

Bodies are sent as raw bytes through FastAPI's test client to the real app on the real
embedding model. A refusal names the instances that alone caused it (``instance_errors``), so the
client can resend the others; a long text is predicted on its truncated tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchinfer_protocol.zero_shot import decode_instance_errors
from model_server.app import create_app
from model_server.backends.embedding import EmbeddingBackend
from model_server.settings import ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMITS = ServerSettings(
    model_max_instances=5,
    model_max_body_bytes=20_000,
    model_max_labels=4,
    model_max_batch_size=4,
    model_batch_pool_rows=4,
)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def client(embedding_backend: EmbeddingBackend) -> Iterator[TestClient]:
    app = create_app(LIMITS, backend=embedding_backend, load_on_startup=False)
    with TestClient(app) as test_client:
        yield test_client


def with_template(template: str) -> bytes:
    return json.dumps(
        {"instances": ["x"], "parameters": {"hypothesis_template": template}}
    ).encode()


def post(client: TestClient, body: bytes, **headers: str) -> tuple[int, dict]:
    response = client.post("/predict", content=body, headers=headers)
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"\xff\xfe\xfd", 400, "not valid JSON"),  # not UTF-8
        (b'{"instances": ["\xed\xa0\x80"]}', 422, "not valid Unicode"),  # UTF-8 of a surrogate
        (b'{"instances": ["\\ud800"]}', 422, "not valid Unicode"),  # escaped lone surrogate
        (b"[" * 1500 + b"]" * 1500, 400, "nests JSON too deeply"),
        (b'{"instances": ' + b"[" * 1500 + b"]" * 1500 + b"}", 400, "too deeply"),
        (b'{"instances": [' + b"9" * 5000 + b"]}", 400, "not valid JSON"),  # over 4,300 digits
        (b'{"instances": [' + b"9" * 4000 + b"]}", 422, "must be a string"),  # a huge integer
        (b'{"instances": [1e999]}', 422, "must be a string"),  # inf
        (b'{"instances": [NaN]}', 422, "must be a string"),
        (b'{"instances": ["x"], "parameters": {"multi_label": NaN}}', 422, "multi_label"),
        (b'{"instances": "x"}', 422, "non-empty list"),
        (b'{"instances": {"text": "x"}}', 422, "non-empty list"),
        (b'{"instances": [null]}', 422, "must be a string"),
        (b'{"instances": [{"text": 5}]}', 422, "must be a string"),
        (b'{"instances": [["x"]]}', 422, "must be a string"),
        (b'{"instances": ["x"], "parameters": "x"}', 422, "must be an object"),
        (b'{"instances": ["x"], "parameters": {"candidate_labels": [1]}}', 422, "strings"),
        (b'{"instances": ["x"], "parameters": {"candidate_labels": {"a": 1}}}', 422, "strings"),
        (b'{"instances": ["x"], "parameters": {"candidate_labels": ["\\udc80"]}}', 422, "Unicode"),
        (b'{"instances": ["x"], "parameters": {"hypothesis_template": 7}}', 422, "string"),
        (
            b'{"instances": ["x"], "parameters": {"hypothesis_template": "{:>999999999}"}}',
            422,
            "{}",
        ),
        (
            b'{"instances": ["x"], "parameters": {"hypothesis_template": "{0.__class__}"}}',
            422,
            "{}",
        ),
        (b'{"instances": ["x"], "parameters": {"hypothesis_template": "{!r}"}}', 422, "{}"),
        (b'{"instances": ["x"], "parameters": {"hypothesis_template": "{"}}', 422, "format"),
        (b"null", 400, "JSON object"),
        (b"", 400, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_4xx_with_a_json_error(
    client: TestClient, body: bytes, status: int, fragment: str
) -> None:
    code, answer = post(client, body)
    assert (code, fragment in answer["error"]) == (status, True), answer


@pytest.mark.parametrize("depth", [500, 955, 960, 990])
def test_a_deep_instance_is_4xx_on_either_side_of_the_parse_limit(
    client: TestClient, depth: int
) -> None:
    """Near 957 levels ``json.loads`` starts to raise RecursionError: 422 below, 400 above."""
    body = b'{"instances": [' + b"[" * depth + b"]" * depth + b"]}"
    code, answer = post(client, body)
    assert code in {400, 422}, answer
    assert isinstance(answer["error"], str)


def test_a_content_length_of_5000_digits_is_413_not_500(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b'{"instances": ["x"]}', headers={"content-length": "9" * 5000}
    )
    assert response.status_code in {400, 413}
    assert "error" in response.json()


def test_refusal_names_each_bad_instance_and_only_those(client: TestClient) -> None:
    body = {"instances": ["fine", "", {"text": 3}, "also fine", "   "]}
    code, answer = post(client, json.dumps(body).encode())
    assert code == 422
    errors = decode_instance_errors(answer)
    assert [e.index for e in errors] == [1, 2, 4]
    assert "instances[2] must be a string" in errors[1].reason
    assert "resend them" in answer["error"]


def test_a_long_text_is_predicted_on_its_truncated_tokens(client: TestClient) -> None:
    text = "please refund the double charge on my invoice " * 60  # ~480 tokens: over 256
    code, answer = post(client, json.dumps({"instances": [text]}).encode())
    assert code == 200, answer
    [prediction] = answer["predictions"]
    assert prediction["sequence"] == text
    assert prediction["labels"][0] == "billing"
    longer = text + " and my phone app crashes " * 30  # past the model's max length
    code, answer = post(client, json.dumps({"instances": [longer]}).encode())
    assert code == 200
    # Tokens past the model's maximum length are cut, as the pipeline truncates.
    assert answer["predictions"][0]["scores"] == prediction["scores"]


@pytest.mark.parametrize(("count", "status"), [(5, 200), (6, 413)])
def test_instance_limit_at_its_value_and_one_past(
    client: TestClient, count: int, status: int
) -> None:
    code, _ = post(client, json.dumps({"instances": ["hi"] * count}).encode())
    assert code == status


@pytest.mark.parametrize(("size", "status"), [(20_000, 200), (20_001, 413)])
def test_body_limit_at_its_value_and_one_past(client: TestClient, size: int, status: int) -> None:
    head = b'{"instances": ["'
    body = head + b"y" * (size - len(head) - 3) + b'"]}'
    assert len(body) == size
    code, answer = post(client, body)
    assert code == status, answer


@pytest.mark.parametrize(("count", "status"), [(4, 200), (5, 422)])
def test_label_limit_at_its_value_and_one_past(client: TestClient, count: int, status: int) -> None:
    labels = [f"label {i}" for i in range(count)]
    body = {"instances": ["x"], "parameters": {"candidate_labels": labels}}
    code, _ = post(client, json.dumps(body).encode())
    assert code == status


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["instances", "parameters", "candidate_labels", "text", "x"])


@FUZZ
@given(
    body=st.dictionaries(KEYS, JSON_VALUES, max_size=3)
    | st.fixed_dictionaries(
        {
            "instances": st.lists(JSON_VALUES | st.text(max_size=30), min_size=1, max_size=4),
            "parameters": st.dictionaries(
                st.sampled_from(["candidate_labels", "multi_label", "hypothesis_template"]),
                JSON_VALUES,
                max_size=3,
            ),
        }
    )
)
def test_fuzzed_json_bodies_never_get_a_500(client: TestClient, body: dict) -> None:
    code, answer = post(client, json.dumps(body).encode())
    assert code in {200, 400, 413, 422}, answer
    assert code == 200 or isinstance(answer["error"], str)


@FUZZ
@given(body=st.binary(max_size=200))
def test_fuzzed_bytes_never_get_a_500(client: TestClient, body: bytes) -> None:
    code, answer = post(client, body)
    assert code in {400, 413, 422}, answer
    assert isinstance(answer["error"], str)


def test_the_server_listens_on_loopback_unless_told_otherwise() -> None:
    assert ServerSettings().model_host == "127.0.0.1"
    assert ServerSettings(model_host="0.0.0.0").model_host == "0.0.0.0"
    dockerfile = (REPO_ROOT / "model-server" / "Dockerfile").read_text()
    assert "MODEL_HOST=0.0.0.0" in dockerfile  # containers must listen on every interface
