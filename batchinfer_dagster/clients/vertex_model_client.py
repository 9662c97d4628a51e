"""The model server on a Vertex AI endpoint (``vertex://projects/…/endpoints/…``).

A Vertex endpoint serving our model-server image speaks the same body as our HTTP server
(``{"instances": [...], "parameters": {...}}`` → ``{"predictions": [...]}``), so the answers go
through the same ``parse_predictions``. What differs is transport: gRPC ``PredictionService``,
a 1.5 MB request limit that a chunk of long texts can exceed, and Google's status codes, which
are mapped here onto ``TransientModelError`` / ``ModelRequestError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.api_core import retry as api_retry
from google.cloud.aiplatform_v1 import PredictionServiceClient, PredictRequest
from google.cloud.aiplatform_v1.services.prediction_service.transports import (
    PredictionServiceGrpcTransport,
)
from google.protobuf import json_format, struct_pb2

from batchinfer_dagster.clients.google_grpc import grpc_client_kwargs
from batchinfer_dagster.clients.model_client import (
    ModelAnswer,
    ModelClient,
    ModelRequestError,
    PredictParameters,
    RefusedInstancesError,
    TransientModelError,
    parse_predictions,
    refusal_error,
)

# Vertex AI refuses online prediction requests over 1.5 MB; stay a little under it.
MAX_REQUEST_BYTES = 1_500_000
# Upper bound of the protobuf framing around one string instance (tags and two length varints).
INSTANCE_OVERHEAD_BYTES = 12
ENDPOINT_URL = re.compile(
    r"^vertex://(?P<name>projects/[^/]+/locations/(?P<region>[^/]+)/endpoints/[^/]+)/?$"
)
# Codes that mean "the service is there but could not answer now": worth another attempt.
RETRYABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)
TRANSIENT = (*RETRYABLE, gexc.ResourceExhausted, gexc.InternalServerError, gexc.Aborted)


def parse_endpoint_url(url: str) -> tuple[str, str]:
    """``vertex://projects/P/locations/L/endpoints/E`` → (endpoint resource name, region)."""
    match = ENDPOINT_URL.match(url)
    if match is None:
        raise ValueError(
            f"BATCHINFER_MODEL_URL={url!r} is not a Vertex endpoint URL; expected "
            "vertex://projects/PROJECT/locations/REGION/endpoints/ENDPOINT_ID "
            "(`batchinfer deploy-model` prints it)"
        )
    return match["name"], match["region"]


def default_retry(
    deadline_seconds: float, initial: float = 1.0, maximum: float = 30.0
) -> api_retry.Retry:
    """Exponential backoff on UNAVAILABLE / DEADLINE_EXCEEDED, for at most ``deadline_seconds``.

    Scale-from-zero and replica restarts answer UNAVAILABLE for a while; anything else (an
    invalid request, a missing endpoint) is not retried here.
    """
    return api_retry.Retry(
        predicate=api_retry.if_exception_type(*RETRYABLE),
        initial=initial,
        maximum=maximum,
        multiplier=2.0,
        timeout=deadline_seconds,
    )


def refusal_of(message: str) -> object:
    """The refusal body our server sent, when Google's error message carries it as JSON.

    A Vertex AI endpoint answers a container's 4xx with an error whose message holds the
    container's body; ``None`` when there is no JSON object in it.
    """
    start = message.find("{")
    if start < 0:
        return None
    try:
        return json.loads(message[start:])
    except ValueError:
        return None


@dataclass(frozen=True)
class VertexEndpoint:
    """Where and how to call a Vertex AI endpoint (``BATCHINFER_MODEL_URL=vertex://…``).

    The config of ``VertexModelClient``, built by ``VertexModelEndpoint`` from ``Settings``;
    every field is required (the defaults live in ``Settings`` alone).
    """

    url: str
    # The prediction API's "host:port" (BATCHINFER_VERTEX_PREDICTION_ENDPOINT); None: regional.
    api_endpoint: str | None
    timeout_seconds: float
    chunk_size: int
    # BATCHINFER_MODEL_MAX_REQUEST_BYTES; the client keeps under Vertex AI's own limit too.
    max_request_bytes: int


def model_id(response_body: dict[str, object], endpoint: str) -> str:
    """The lineage key of a Vertex answer: the Model resource (and version) that served it.

    Vertex passes only ``predictions`` of the container's body through; it names the model in
    its own fields ``model`` / ``modelVersionId``, or at least ``deployedModelId``.
    """
    model = response_body.get("model")
    if isinstance(model, str) and model:
        version = response_body.get("modelVersionId")
        return f"{model}@{version}" if version else model
    return f"{endpoint}/deployedModels/{response_body.get('deployedModelId', 'unknown')}"


class VertexModelClient(ModelClient):
    """``PredictionService.Predict`` on a Vertex AI endpoint serving our model-server image."""

    def __init__(
        self,
        endpoint: VertexEndpoint,
        *,
        retry: api_retry.Retry | None = None,
    ) -> None:
        self.endpoint, region = parse_endpoint_url(endpoint.url)
        self.chunk_size = endpoint.chunk_size
        self.timeout = endpoint.timeout_seconds
        self.retry = retry or default_retry(4 * endpoint.timeout_seconds)
        # Vertex AI's own limit, or the configured one when smaller; a text too large for it
        # alone is answered with a RefusedText and never sent.
        self.max_request_bytes = min(MAX_REQUEST_BYTES, endpoint.max_request_bytes)
        self.api_endpoint = endpoint.api_endpoint or f"{region}-aiplatform.googleapis.com"
        self.client = PredictionServiceClient(
            **grpc_client_kwargs(PredictionServiceGrpcTransport, self.api_endpoint)
        )

    @property
    def source(self) -> str:
        return f"Vertex AI endpoint {self.endpoint} (via {self.api_endpoint})"

    def instance_bytes(self, text: str) -> int:
        return len(text.encode("utf-8")) + INSTANCE_OVERHEAD_BYTES

    def request_overhead_bytes(self, parameters: PredictParameters) -> int:
        return PredictRequest.pb(self._request([], parameters)).ByteSize()

    def send(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        return self._predict(texts, parameters)

    def _request(self, texts: list[str], parameters: PredictParameters) -> PredictRequest:
        # Built on the raw protobuf: proto-plus cannot marshal a list into `repeated Value`.
        request = PredictRequest.pb()(endpoint=self.endpoint)
        request.instances.extend(struct_pb2.Value(string_value=text) for text in texts)
        json_format.ParseDict(parameters.as_json(), request.parameters)
        return PredictRequest.wrap(request)

    def _predict(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        request = self._request(texts, parameters)
        where = self.source
        try:
            response = self.client.predict(request=request, retry=self.retry, timeout=self.timeout)
        except gexc.RetryError as exc:
            raise TransientModelError(
                f"{where} kept failing until the retry deadline: {exc.cause or exc}"
            ) from exc
        except TRANSIENT as exc:
            raise TransientModelError(f"{where} is unavailable: {exc}") from exc
        except gexc.GoogleAPICallError as exc:
            refusal = refusal_error(
                f"{where} refused the request ({exc.code}): {exc.message}",
                refusal_of(exc.message or ""),
            )
            if isinstance(refusal, RefusedInstancesError):
                raise refusal from exc
            raise ModelRequestError(
                f"{where} refused the request ({exc.code}): {exc.message}. Check the endpoint "
                "name, that a model is deployed to it, and the service account's "
                "roles/aiplatform.user."
            ) from exc
        body = json_format.MessageToDict(type(response).pb(response))
        predictions = body.get("predictions", [])
        return ModelAnswer(
            model=model_id(body, self.endpoint),
            answers=list(parse_predictions({"predictions": predictions}, len(texts), where)),
        )

    def close(self) -> None:
        self.client.transport.close()
