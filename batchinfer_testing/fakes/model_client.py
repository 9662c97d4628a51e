"""``ScriptedModelClient``: a model client (``clients/model_client.py``) that follows a script.

It answers every text with the configured labels, the first scoring highest; refuses the texts
in ``refuse`` one by one, as the server's ``instance_errors`` do; refuses whole requests while
``refuse_requests`` is set (a 4xx); and fails ``transient_failures`` requests transiently before
answering again (a server down or rolling out). The base class's chunking, request bounds and
resending of the unrefused texts run unchanged, so a test of the ledger sees what the HTTP client
would hand it.
"""

from __future__ import annotations

from batchinfer_dagster.clients.model_client import (
    ModelAnswer,
    ModelClient,
    ModelRequestError,
    RefusedInstancesError,
    TransientModelError,
)
from batchinfer_protocol.zero_shot import InstanceError, Prediction, PredictParameters


class ScriptedModelClient(ModelClient):
    """Answers as scripted; ``requests`` records the texts of every request sent."""

    def __init__(self, *, chunk_size: int, max_request_bytes: int, model: str = "scripted") -> None:
        self.chunk_size = chunk_size
        self.max_request_bytes = max_request_bytes
        self.model = model
        self.refuse: dict[str, str] = {}
        self.refuse_requests: str | None = None
        self.transient_failures = 0
        self.requests: list[list[str]] = []

    def send(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        self.requests.append(list(texts))
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientModelError(f"scripted transient failure ({len(texts)} texts)")
        if self.refuse_requests is not None:
            raise ModelRequestError(f"scripted refusal: {self.refuse_requests}")
        refused = [
            InstanceError(index, self.refuse[text])
            for index, text in enumerate(texts)
            if text in self.refuse
        ]
        if refused:
            raise RefusedInstancesError(f"scripted: {len(refused)} refused", refused)
        count = len(parameters.candidate_labels)
        scores = [2 ** (count - i) / (2 ** (count + 1) - 2) for i in range(count)]
        return ModelAnswer(
            model=self.model,
            answers=[Prediction(text, list(parameters.candidate_labels), scores) for text in texts],
        )

    def instance_bytes(self, text: str) -> int:
        return len(text.encode("utf-8")) + 3  # quotes and a comma, as JSON would

    def request_overhead_bytes(self, parameters: PredictParameters) -> int:
        return 64
