"""Clients of the model server: our HTTP server (locally or on Cloud Run), or a Vertex endpoint.

A client splits a ledger batch into *client chunks* (``chunk_size`` texts, a few in flight at
once), each sent in requests within ``max_request_bytes``; the server merges chunks of all
clients into its own dynamic batches (docs/architecture.md, "Glossary"). Every answer names the
model that made it: that id is the lineage key of the stored predictions, so a changed model
never overwrites another's rows.

Errors are split by what a caller should do: ``TransientModelError`` (connection refused, 5xx,
timeout) is worth a retry with backoff; ``ModelRequestError`` (4xx) never gets better by retrying.
A server that is starting is neither: while its ``/health`` says ``loading`` or ``warming_up``
the HTTP client waits for it (``READY_WAIT_SECONDS`` at most), so a run launched during a
restart spends no step retry and no batch attempt on it.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from batchinfer_dagster.chunks import chunk_list
from batchinfer_protocol.outcomes import ModelError, ModelRequestError, TransientModelError
from batchinfer_protocol.zero_shot import (
    InstanceError,
    Prediction,
    PredictParameters,
    decode_instance_errors,
    decode_model,
    decode_predictions,
    encode_request,
)

# Chunks in flight at once: enough to keep the server's dynamic batcher full.
MAX_IN_FLIGHT = 4
# Our model server's prediction route (model-server/model_server/app.py).
PREDICT_ROUTE = "/predict"

# Our model server's readiness route (model-server/model_server/app.py, AIP_HEALTH_ROUTE).
HEALTH_ROUTE = "/health"
# What our model server's /health says while it cannot predict yet but will (model_server.app:
# "loading" the weights, "warming_up" its shapes); "failed" and anything else are not waited for.
STARTING_STATES = frozenset({"loading", "warming_up"})
# How long one request waits for a starting server before it is a transient error like any
# other (then the run's step retries and the batch's attempts take over). The CPU warm-up of
# `make run` took 58-138 s on a loaded 2-core machine; a GPU server loading a large model from
# a bucket takes minutes. A wait longer than this is a server that does not come up.
READY_WAIT_SECONDS = 600.0
# Between two looks at /health while waiting, and the timeout of one look.
READY_POLL_SECONDS = 1.0
# A health read answers at once when the server is up; `status` must not hang on one that is not.
HEALTH_TIMEOUT_SECONDS = 5.0


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The seconds a 429's ``Retry-After`` asks to wait (RFC 9110 §10.2.3: delta-seconds; an
    HTTP-date is not used by our server and is not honoured); None for any other answer."""
    value = response.headers.get("retry-after", "")
    if response.status_code != 429 or not (value.isascii() and value.isdigit()) or len(value) > 6:
        return None
    return float(value)


class RefusedInstancesError(ModelRequestError):
    """The server refused some instances of a request on their own merits (``instance_errors``).

    ``instance_errors`` index the texts of the request that was sent.
    """

    def __init__(self, message: str, instance_errors: Sequence[InstanceError]) -> None:
        super().__init__(message)
        self.instance_errors = list(instance_errors)


@dataclass(frozen=True)
class RefusedText:
    """A text that gets no prediction, and why: the server refused it, or it is too large to send.

    It takes the place of that text's ``Prediction`` in the answers; the other texts of its
    request are predicted as if it had never been there.
    """

    reason: str


Answer = Prediction | RefusedText


@dataclass(frozen=True)
class ServedModel:
    """The model a server reports: its id and weights digest (None: the server gives none)."""

    model: str
    model_digest: str | None


@dataclass(frozen=True)
class ModelAnswer:
    """Answers in the order of the texts, and the id of the model that made the predictions.

    ``model`` is empty when no text reached the model (every one refused or too large).
    ``model_digest`` is the digest of the weights the server reports with its answers
    (``"model_digest"``), None when it reports none (older servers, other containers).
    """

    model: str
    answers: list[Answer]
    model_digest: str | None = None

    @property
    def predictions(self) -> list[Prediction]:
        """The answers that are predictions (in order), refusals left out."""
        return [answer for answer in self.answers if isinstance(answer, Prediction)]


def joined(parts: Sequence[ModelAnswer], source: str) -> ModelAnswer:
    """The answers of consecutive requests or chunks as one; they must come from one model.

    Two models in one batch happen only while the server rolls out a new model: the batch is
    retried (``TransientModelError``) rather than stored under two lineage keys.
    """
    models = sorted({(part.model, part.model_digest or "") for part in parts if part.model})
    if len(models) > 1:
        named = [f"{name}@{digest}" if digest else name for name, digest in models]
        raise TransientModelError(
            f"{source} answered one batch with {len(models)} models {named}: a new model is "
            "rolling out; the batch is predicted again once one model serves"
        )
    model, digest = models[0] if models else ("", "")
    return ModelAnswer(
        model=model,
        answers=[answer for part in parts for answer in part.answers],
        model_digest=digest or None,
    )


def requests_within(
    sizes: Sequence[int], base_bytes: int, limit: int
) -> tuple[list[list[int]], list[int]]:
    """Indices of consecutive texts grouped into requests of at most ``limit`` bytes.

    ``sizes`` are the bytes each text adds to a request, ``base_bytes`` the size of a request
    without texts. Returns the groups, in order, and the indices of texts too large to fit in any
    request even alone (they are never sent).
    """
    groups: list[list[int]] = []
    too_large: list[int] = []
    current: list[int] = []
    size = base_bytes
    for index, item in enumerate(sizes):
        if base_bytes + item > limit:
            too_large.append(index)
            continue
        if current and size + item > limit:
            groups.append(current)
            current, size = [], base_bytes
        current.append(index)
        size += item
    if current:
        groups.append(current)
    return groups, too_large


class ModelClient(ABC):
    """Predict many texts; the answers are in the order of the texts.

    Each answer is a ``Prediction``, or a ``RefusedText`` for a text the server refused alone or
    that is too large to send: one bad text never costs the others of its request.
    """

    # Set by each implementation from its config (BATCHINFER_MODEL_CHUNK_SIZE, _MAX_REQUEST_BYTES).
    chunk_size: int
    max_request_bytes: int

    def predict(self, texts: Sequence[str], parameters: PredictParameters) -> ModelAnswer:
        """Split ``texts`` into client chunks, send them concurrently, join the answers in order."""
        chunks = chunk_list(texts, self.chunk_size)
        if len(chunks) <= 1:
            parts = [self.predict_chunk(chunk, parameters) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_IN_FLIGHT, len(chunks))) as pool:
                parts = list(pool.map(lambda chunk: self.predict_chunk(chunk, parameters), chunks))
        return joined(parts, self.source)

    @property
    def source(self) -> str:
        """The server, as error messages name it."""
        return type(self).__name__

    def predict_chunk(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        """One chunk, in requests within ``max_request_bytes``; refused texts answered alone.

        A text that cannot be sent (over the request bound even alone, or not encodable as
        UTF-8) is answered with a ``RefusedText`` without sending it.
        """
        answers: dict[int, Answer] = {}
        sizes: dict[int, int] = {}
        for index, text in enumerate(texts):
            try:
                # Checked on the text itself, so the position is the text's, not its JSON's.
                text.encode("utf-8")
                sizes[index] = self.instance_bytes(text)
            except UnicodeEncodeError as error:
                answers[index] = RefusedText(
                    f"the text is not valid Unicode ({error.reason} at character "
                    f"{error.start}), so it cannot be sent"
                )
        sendable = sorted(sizes)
        base = self.request_overhead_bytes(parameters)
        groups, too_large = requests_within(
            [sizes[i] for i in sendable], base, self.max_request_bytes
        )
        for position in too_large:
            index = sendable[position]
            answers[index] = RefusedText(
                f"the text is {sizes[index]} bytes in a request; a request to the model server "
                f"holds at most {self.max_request_bytes} bytes, so it cannot be sent"
            )
        parts: list[ModelAnswer] = []
        for group in groups:
            indices = [sendable[position] for position in group]
            part = self.send_dropping_refused([texts[i] for i in indices], parameters)
            answers.update(zip(indices, part.answers, strict=True))
            parts.append(part)
        joint = joined(parts, self.source)
        return ModelAnswer(
            model=joint.model,
            answers=[answers[index] for index in range(len(texts))],
            model_digest=joint.model_digest,
        )

    def send_dropping_refused(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        """Send ``texts``; when the server refuses some instances, resend the others.

        Each round removes at least one text, so this ends after at most ``len(texts)`` requests.
        """
        answers: dict[int, Answer] = {}
        pending = list(range(len(texts)))
        model, model_digest = "", None
        while pending:
            try:
                sent = self.send([texts[i] for i in pending], parameters)
            except RefusedInstancesError as refusal:
                refused = {error.index: error.reason for error in refusal.instance_errors}
                if not refused or not all(0 <= i < len(pending) for i in refused):
                    raise ModelRequestError(
                        f"{refusal} (its instance_errors {sorted(refused)} do not name "
                        f"instances of the {len(pending)} sent)"
                    ) from refusal
                answers.update({pending[i]: RefusedText(reason) for i, reason in refused.items()})
                pending = [
                    index for position, index in enumerate(pending) if position not in refused
                ]
                continue
            answers.update(zip(pending, sent.answers, strict=True))
            model, model_digest = sent.model, sent.model_digest
            break
        return ModelAnswer(
            model=model,
            answers=[answers[index] for index in range(len(texts))],
            model_digest=model_digest,
        )

    @abstractmethod
    def send(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        """One request; ``RefusedInstancesError`` when the server refuses single instances."""

    @abstractmethod
    def instance_bytes(self, text: str) -> int:
        """Bytes that ``text`` adds to a request (its encoding and separators)."""

    @abstractmethod
    def request_overhead_bytes(self, parameters: PredictParameters) -> int:
        """Bytes of a request without instances."""

    def served_model(self) -> ServedModel | None:
        """The model the server serves now, as its health route reports it; None: unknown.

        ``staleness`` compares stored predictions with it. Servers that cannot say (a Vertex
        endpoint) answer None, and staleness by model is then not judged.
        """
        return None

    def close(self) -> None:
        """Release connections."""


def parse_predictions(body: object, expected: int, source: str) -> list[Prediction]:
    """Check and convert a ``{"predictions": [...]}`` answer; a wrong shape is a server bug."""
    try:
        return decode_predictions(body, expected)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{source} {error}") from error


def parse_answer(body: object, expected: int, source: str) -> ModelAnswer:
    """A 200 answer of our model server: its predictions and the model id it reports."""
    try:
        model = decode_model(body)
    except ValueError as error:
        raise ModelError(f"{source} {error}; is it our model server?") from error
    return ModelAnswer(
        model=model,
        answers=list(parse_predictions(body, expected, source)),
        model_digest=reported_model_digest(body),
    )


def reported_model_digest(body: object) -> str | None:
    """The ``model_digest`` an answer or ``/health`` reports; None when absent or not a string.

    Read defensively: servers older than the field (and Vertex's own containers) send none, and
    their predictions are stored with the weights digest unknown rather than refused.
    """
    digest = body.get("model_digest") if isinstance(body, dict) else None
    return digest.strip() if isinstance(digest, str) and digest.strip() else None


def refusal_error(message: str, body: object) -> ModelRequestError:
    """The error of a 4xx answer: per instance when its body names ``instance_errors``."""
    try:
        instance_errors = decode_instance_errors(body)
    except (ValueError, KeyError, TypeError):
        instance_errors = []
    if instance_errors:
        return RefusedInstancesError(message, instance_errors)
    return ModelRequestError(message)


def json_bytes(value: object) -> bytes:
    """The request encoding: compact UTF-8 JSON, so its size is what the server counts."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def read_health(client: httpx.Client, health_url: str) -> str:
    """What our model server's ``/health`` says: ``ready``, ``loading``, ``warming_up``,
    ``failed``, ``unreachable`` (no connection), or ``HTTP <code>`` for another answer (e.g. a
    403 from a private Cloud Run service)."""
    try:
        response = client.get(health_url, timeout=READY_POLL_SECONDS)
    except httpx.TransportError:
        return "unreachable"
    if response.status_code == 200:
        return "ready"
    try:
        state = response.json().get("status")
    except (ValueError, AttributeError):
        state = None
    return state if isinstance(state, str) else f"HTTP {response.status_code}"


@dataclass(frozen=True)
class HttpModelClientConfig:
    """Where and how to call our model server: the ``BATCHINFER_MODEL_*`` settings, all required.

    ``HttpModelServer`` builds it from its fields (``deployments.py`` from ``Settings``), tests
    from ``batchinfer_testing.deployment.model_client_of``; no value here has a default of its
    own, so a hand-built client cannot silently differ from the configured one.
    """

    # Base URL (http://HOST:PORT or https://HOST); the client posts to {url}/predict.
    url: str
    # Seconds one request may take.
    timeout_seconds: float
    # Texts per request (client chunk).
    chunk_size: int
    # Bytes per request body at most; a text too large alone is answered with a RefusedText.
    max_request_bytes: int


class HttpModelClient(ModelClient):
    """Our model server's ``POST /predict`` (locally or on Cloud Run).

    ``auth`` signs each request (Cloud Run's ID tokens); ``clock`` and ``sleep`` pace the wait
    for a starting server. They are collaborators, not settings.
    """

    def __init__(
        self,
        config: HttpModelClientConfig,
        *,
        auth: httpx.Auth | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.url = config.url.rstrip("/") + PREDICT_ROUTE
        self.chunk_size = config.chunk_size
        self.max_request_bytes = config.max_request_bytes
        self.health_url = config.url.rstrip("/") + HEALTH_ROUTE
        self.client = httpx.Client(timeout=config.timeout_seconds, auth=auth)
        self.clock = clock
        self.sleep = sleep

    def server_state(self) -> str:
        """What the server's ``/health`` says now (``read_health``)."""
        return read_health(self.client, self.health_url)

    def wait_while_starting(self, cause: str, deadline: float) -> None:
        """Return once a server that said it was starting is ready; otherwise raise
        ``TransientModelError`` naming ``cause``: the server is not starting (down, failed,
        or ready yet still refusing, which waiting cannot fix), or ``deadline`` (of ``clock``)
        passed."""
        state = self.server_state()
        if state not in STARTING_STATES:
            raise TransientModelError(f"{cause} (its /health: {state})")
        while state in STARTING_STATES:
            if self.clock() >= deadline:
                raise TransientModelError(
                    f"{cause}; its /health still says {state} after waiting "
                    f"{READY_WAIT_SECONDS:.0f} s for it to start"
                )
            self.sleep(READY_POLL_SECONDS)
            state = self.server_state()
        if state != "ready":
            raise TransientModelError(f"{cause}; it stopped starting (its /health: {state})")

    @property
    def source(self) -> str:
        return f"model server {self.url}"

    def instance_bytes(self, text: str) -> int:
        # The text as a JSON string, and the comma before it.
        return len(json_bytes(text)) + 1

    def request_overhead_bytes(self, parameters: PredictParameters) -> int:
        # Less the comma that the first text does not need: sizes add up to the exact body.
        return len(json_bytes(encode_request([], parameters))) - 1

    def waited_while_busy(self, response: httpx.Response, deadline: float) -> bool:
        """Whether ``response`` was a 429 with ``Retry-After`` and the client waited as told,
        to send again. Our server says so when its body budget is full; the wait has the same
        bound (``deadline``, of ``clock``) as one for a starting server, past which it raises
        ``TransientModelError`` without waiting."""
        retry_after = retry_after_seconds(response)
        if retry_after is None:
            return False
        if self.clock() + retry_after > deadline:
            raise TransientModelError(
                f"model server {self.url} answered 429 with Retry-After: {retry_after} "
                f"past the {READY_WAIT_SECONDS:.0f} s this request may wait"
            )
        self.sleep(retry_after)
        return True

    def send(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        """One request; while the server says it is starting (a 503, or no connection, and
        ``/health`` says ``loading`` or ``warming_up``) or busy (a 429 with ``Retry-After``),
        wait for it and send again."""
        content = json_bytes(encode_request(texts, parameters))
        deadline = self.clock() + READY_WAIT_SECONDS
        while True:
            try:
                response = self.client.post(
                    self.url, content=content, headers={"content-type": "application/json"}
                )
            except httpx.TimeoutException as exc:
                raise TransientModelError(f"model server {self.url} timed out: {exc!r}") from exc
            except httpx.TransportError as exc:
                self.wait_while_starting(f"model server {self.url} unreachable: {exc!r}", deadline)
                continue
            if self.waited_while_busy(response, deadline):
                continue
            if response.status_code != 503:
                break
            self.wait_while_starting(
                f"model server {self.url} answered 503: {response.text[:300]}", deadline
            )
        # 408: the server's body deadline passed (MODEL_BODY_TIMEOUT_SECONDS), the same body
        # may well arrive in time on the next try; 429: overloaded.
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise TransientModelError(
                f"model server {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise refusal_error(
                f"model server {self.url} refused the request ({response.status_code}): "
                f"{response.text[:300]}",
                body,
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientModelError(f"model server {self.url} sent invalid JSON") from exc
        return parse_answer(body, len(texts), self.url)

    def served_model(self) -> ServedModel | None:
        """``GET {base}/health``'s ``model`` and ``model_digest``; None when not ready or down."""
        try:
            response = self.client.get(self.health_url, timeout=HEALTH_TIMEOUT_SECONDS)
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model.strip():
            return None
        return ServedModel(model, reported_model_digest(body))

    def close(self) -> None:
        self.client.close()
