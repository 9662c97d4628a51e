"""The Vertex endpoint client with the real PredictionServiceClient against the local fake."""

from __future__ import annotations

import grpc
import pytest

from batchinfer_dagster.clients.model_client import (
    ModelRequestError,
    PredictParameters,
    RefusedInstancesError,
    RefusedText,
    TransientModelError,
    refusal_error,
    requests_within,
)
from batchinfer_dagster.clients.vertex_model_client import (
    INSTANCE_OVERHEAD_BYTES,
    MAX_REQUEST_BYTES,
    VertexModelClient,
    default_retry,
    parse_endpoint_url,
    refusal_of,
)
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.resources.model_server import VertexModelEndpoint
from batchinfer_dagster.settings import Settings
from batchinfer_testing.fakes.google import FakeVertex

PARAMETERS = PredictParameters(("mobile", "billing"))


def endpoint_resource(settings: Settings) -> VertexModelEndpoint:
    resource = resources_for(settings).model_server
    assert isinstance(resource, VertexModelEndpoint)
    return resource


def make_client(settings: Settings, deadline: float = 2.0) -> VertexModelClient:
    return VertexModelClient(
        endpoint_resource(settings).endpoint(),
        retry=default_retry(deadline, initial=0.01, maximum=0.05),
    )


def test_the_model_server_resource_picks_vertex_for_vertex_urls(
    vertex_settings: Settings,
) -> None:
    client = endpoint_resource(vertex_settings).client()
    assert isinstance(client, VertexModelClient)
    assert client.endpoint == "projects/test-project/locations/europe-west4/endpoints/123"
    client.close()


@pytest.mark.usefixtures("adc_key_file")
def test_regional_endpoint_by_default(vertex_settings: Settings) -> None:
    settings = vertex_settings.model_copy(update={"vertex_prediction_endpoint": None})
    client = endpoint_resource(settings).client()
    assert isinstance(client, VertexModelClient)
    assert client.api_endpoint == "europe-west4-aiplatform.googleapis.com"
    client.close()


def test_predict_answers_in_order(vertex_settings: Settings, fake_vertex: FakeVertex) -> None:
    client = make_client(vertex_settings)
    texts = [f"text {i}" for i in range(10)]

    answer = client.predict(texts, PARAMETERS)
    predictions = answer.predictions

    # The lineage key: the deployed model that answered (Vertex names it, not the container).
    assert answer.model == (
        "projects/test-project/locations/europe-west4/endpoints/123/deployedModels/1"
    )
    assert [p.sequence for p in predictions] == texts
    assert predictions[0].labels == ["mobile", "billing"]
    assert predictions[0].scores == [0.5, 0.5]
    assert len(fake_vertex.predict_sizes) == 1


def test_unavailable_is_retried_then_succeeds(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    fake_vertex.predict_errors.extend([grpc.StatusCode.UNAVAILABLE] * 2)
    client = make_client(vertex_settings)

    predictions = client.predict(["a"], PARAMETERS).predictions

    assert [p.sequence for p in predictions] == ["a"]
    assert len(fake_vertex.predict_sizes) == 3


def test_unavailable_past_the_deadline_is_transient(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    fake_vertex.predict_errors.extend([grpc.StatusCode.UNAVAILABLE] * 1000)
    client = make_client(vertex_settings, deadline=0.3)

    with pytest.raises(TransientModelError, match="retry deadline"):
        client.predict(["a"], PARAMETERS)
    assert len(fake_vertex.predict_sizes) > 1


def test_invalid_argument_is_a_request_error_without_retry(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    fake_vertex.predict_errors.append(grpc.StatusCode.INVALID_ARGUMENT)
    client = make_client(vertex_settings)

    with pytest.raises(ModelRequestError, match="endpoints/123 .*refused the request"):
        client.predict(["a"], PARAMETERS)
    assert len(fake_vertex.predict_sizes) == 1


def test_resource_exhausted_is_transient(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    fake_vertex.predict_errors.append(grpc.StatusCode.RESOURCE_EXHAUSTED)
    with pytest.raises(TransientModelError, match="unavailable"):
        make_client(vertex_settings).predict(["a"], PARAMETERS)


def test_large_chunks_are_split_under_the_request_limit(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    settings = vertex_settings.model_copy(update={"model_chunk_size": 1000})
    client = make_client(settings)
    # 40 texts of ~100 KB: 4 MB in one chunk of the base client, so Vertex needs 3+ requests.
    texts = [f"{i:03d}" + "é" * 50_000 for i in range(40)]

    predictions = client.predict(texts, PARAMETERS).predictions

    assert [p.sequence for p in predictions] == texts
    assert len(fake_vertex.predict_sizes) >= 3
    assert max(fake_vertex.predict_sizes) <= MAX_REQUEST_BYTES
    assert sum(fake_vertex.predict_sizes) > 4_000_000


def test_a_text_over_the_limit_is_refused_alone_and_never_sent(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    """Issue example 2 on Vertex: the 1.5 MB check refuses one text, not its chunk."""
    client = make_client(vertex_settings)
    base = client.request_overhead_bytes(PARAMETERS)
    fits = "f" * (MAX_REQUEST_BYTES - base - INSTANCE_OVERHEAD_BYTES)  # exactly at the limit
    over = fits + "o"  # one byte past it
    texts = ["short one", over, fits, "short two"]

    answers = client.predict(texts, PARAMETERS).answers

    assert isinstance(answers[1], RefusedText)
    assert f"at most {MAX_REQUEST_BYTES} bytes" in answers[1].reason
    assert [a.sequence for i, a in enumerate(answers) if i != 1] == [texts[0], fits, texts[3]]
    # The text at the limit was sent (framing is at most INSTANCE_OVERHEAD_BYTES of the bound).
    assert max(fake_vertex.predict_sizes) > MAX_REQUEST_BYTES - INSTANCE_OVERHEAD_BYTES
    assert max(fake_vertex.predict_sizes) <= MAX_REQUEST_BYTES
    assert len(fake_vertex.predict_sizes) == 3  # [short one] [fits] [short two]: never `over`


def test_split_keeps_order_and_fills_requests() -> None:
    sizes = [100] * 10
    groups, too_large = requests_within(sizes, base_bytes=0, limit=300)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert [i for g in groups for i in g] == list(range(10))
    assert too_large == []
    assert INSTANCE_OVERHEAD_BYTES == 12


def test_split_sets_apart_only_the_texts_too_large_alone() -> None:
    groups, too_large = requests_within([10, 91, 90, 10], base_bytes=10, limit=100)
    assert (groups, too_large) == ([[0], [2], [3]], [1])


@pytest.mark.parametrize(
    "url",
    ["vertex://endpoints/1", "vertex://projects/p/locations/l/endpoints/", "https://x.run.app"],
)
def test_bad_endpoint_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="vertex://projects/PROJECT/locations/REGION/endpoints/"):
        parse_endpoint_url(url)


def test_a_refusal_body_in_googles_error_message_refuses_single_instances() -> None:
    """Vertex AI passes a container's 4xx body on in its error message."""
    message = (
        'Prediction failed with status 422: {"error": "1 of 2 instances refused", '
        '"instance_errors": [{"index": 1, "reason": "instances[1] has an empty text"}]}'
    )
    error = refusal_error("refused", refusal_of(message))
    assert isinstance(error, RefusedInstancesError)
    assert [(e.index, e.reason) for e in error.instance_errors] == [
        (1, "instances[1] has an empty text")
    ]
    plain = refusal_error("refused", refusal_of("Permission denied on endpoint"))
    assert type(plain) is ModelRequestError
