"""The model server behind Google auth: a Vertex AI endpoint, or Cloud Run with ID tokens.

A Vertex endpoint serving our model-server image speaks the same body as our HTTP server
(``{"instances": [...], "parameters": {...}}`` → ``{"predictions": [...]}``), so the answers go
through the same ``parse_predictions``. What differs is transport: gRPC ``PredictionService``,
a 1.5 MB request limit that a chunk of long texts can exceed, and Google's status codes, which
are mapped here onto ``TransientModelError`` / ``ModelRequestError``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Generator
from typing import Any

import grpc
import httpx
from google.api_core import exceptions as gexc
from google.api_core import retry as api_retry
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.auth.transport import requests as google_requests
from google.cloud.aiplatform_v1 import PredictionServiceClient, PredictRequest
from google.cloud.aiplatform_v1.services.prediction_service.transports import (
    PredictionServiceGrpcTransport,
)
from google.oauth2 import id_token
from google.protobuf import json_format, struct_pb2

from batchinfer_dagster.resources.model_client import (
    ModelClient,
    ModelRequestError,
    Prediction,
    PredictParameters,
    RefusedInstancesError,
    TransientModelError,
    parse_predictions,
    refusal_error,
)
from batchinfer_dagster.settings import Settings

# Vertex AI refuses online prediction requests over 1.5 MB; stay a little under it.
MAX_REQUEST_BYTES = 1_500_000
# Upper bound of the protobuf framing around one string instance (tags and two length varints).
INSTANCE_OVERHEAD_BYTES = 12
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ENDPOINT_URL = re.compile(
    r"^vertex://(?P<name>projects/[^/]+/locations/(?P<region>[^/]+)/endpoints/[^/]+)/?$"
)
# Codes that mean "the service is there but could not answer now": worth another attempt.
RETRYABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)
TRANSIENT = (*RETRYABLE, gexc.ResourceExhausted, gexc.InternalServerError, gexc.Aborted)


def is_local_endpoint(endpoint: str) -> bool:
    """True for ``localhost:PORT`` and loopback addresses: the fakes and emulators of tests."""
    host = endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint
    return host.strip("[]") in LOCAL_HOSTS


def grpc_client_kwargs(transport_class: type, endpoint: str) -> dict[str, Any]:
    """Keyword arguments that point a generated ``*ServiceClient`` at ``endpoint``.

    A loopback endpoint gets a plaintext channel and no credentials (the local fakes speak no
    TLS and know no Google account); any other endpoint keeps TLS and Application Default
    Credentials and only overrides the host.
    """
    if is_local_endpoint(endpoint):
        channel = grpc.insecure_channel(
            endpoint,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        return {"transport": transport_class(channel=channel)}
    return {"client_options": ClientOptions(api_endpoint=endpoint)}


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


class VertexModelClient(ModelClient):
    """``PredictionService.Predict`` on a Vertex AI endpoint serving our model-server image."""

    def __init__(
        self,
        settings: Settings,
        *,
        retry: api_retry.Retry | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.endpoint, region = parse_endpoint_url(settings.model_url)
        self.chunk_size = settings.model_chunk_size
        self.timeout = settings.model_timeout_seconds
        self.retry = retry or default_retry(4 * settings.model_timeout_seconds)
        # Vertex AI's own limit, or the configured one when smaller; a text too large for it
        # alone is answered with a RefusedText and never sent.
        self.max_request_bytes = min(max_request_bytes, settings.model_max_request_bytes)
        self.api_endpoint = (
            settings.vertex_prediction_endpoint or f"{region}-aiplatform.googleapis.com"
        )
        self.client = PredictionServiceClient(
            **grpc_client_kwargs(PredictionServiceGrpcTransport, self.api_endpoint)
        )

    def instance_bytes(self, text: str) -> int:
        return len(text.encode("utf-8")) + INSTANCE_OVERHEAD_BYTES

    def request_overhead_bytes(self, parameters: PredictParameters) -> int:
        return PredictRequest.pb(self._request([], parameters)).ByteSize()

    def send(self, texts: list[str], parameters: PredictParameters) -> list[Prediction]:
        return self._predict(texts, parameters)

    def _request(self, texts: list[str], parameters: PredictParameters) -> PredictRequest:
        # Built on the raw protobuf: proto-plus cannot marshal a list into `repeated Value`.
        request = PredictRequest.pb()(endpoint=self.endpoint)
        request.instances.extend(struct_pb2.Value(string_value=text) for text in texts)
        json_format.ParseDict(parameters.as_json(), request.parameters)
        return PredictRequest.wrap(request)

    def _predict(self, texts: list[str], parameters: PredictParameters) -> list[Prediction]:
        request = self._request(texts, parameters)
        where = f"Vertex AI endpoint {self.endpoint} (via {self.api_endpoint})"
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
        return parse_predictions({"predictions": body.get("predictions", [])}, len(texts), where)

    def close(self) -> None:
        self.client.transport.close()


class GoogleIdTokenAuth(httpx.Auth):
    """Bearer Google ID token for a private Cloud Run service (audience = its URL).

    The credentials come from Application Default Credentials (the metadata server on Cloud
    Run, a service-account key file locally); the token is reused until it is about to expire.
    """

    def __init__(self, audience: str, credentials: Credentials | None = None) -> None:
        self.audience = audience
        self._credentials = credentials
        self._request = google_requests.Request()
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid ID token for the audience, fetched again only when the cached one expired."""
        with self._lock:
            try:
                if self._credentials is None:
                    self._credentials = id_token.fetch_id_token_credentials(
                        self.audience, request=self._request
                    )
                if not self._credentials.valid:
                    self._credentials.refresh(self._request)
            except auth_exceptions.DefaultCredentialsError as exc:
                raise ModelRequestError(
                    f"no Google credentials to sign an ID token for {self.audience}: {exc}. "
                    "Run on Google Cloud with a service account, or set "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file."
                ) from exc
            except auth_exceptions.RefreshError as exc:
                raise TransientModelError(
                    f"fetching an ID token for {self.audience} failed: {exc}"
                ) from exc
            return str(self._credentials.token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request
