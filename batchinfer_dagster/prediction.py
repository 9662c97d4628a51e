"""Predicting one ledger batch: features → model → settle. Dagster-free.

The domain owns the shapes it consumes (``TextSource``, ``Classifier`` and their answers, as
Protocols the clients meet without importing this module); the failure classes come from the
protocol (``batchinfer_protocol.outcomes``), which the clients raise.

A run reads its batch's requests (marking the batch running), fetches the texts of all their
records in one call, sends them to the model server in client chunks, and settles the batch in
one transaction: predictions upserted on (record id, configuration), each with its receipt
(``receipts``: the model and weights digest the server reported, the request's parameters, the
text's digest, run and batch), requests done, missing records waiting for features or
dead-lettered. Model errors propagate before anything is written, so a failed run leaves the
batch as it was and a retry is idempotent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine

from batchinfer_dagster import db, ledger, rollout
from batchinfer_dagster.receipts import (
    UNKNOWN,
    Configuration,
    ModelIdentity,
    Parameters,
    text_digest,
)
from batchinfer_dagster.staleness import Deployment
from batchinfer_protocol.outcomes import ModelRequestError
from batchinfer_protocol.zero_shot import Prediction, PredictParameters


class TextSource(Protocol):
    """Where a run reads its records' texts (the feature store): ids it holds -> text."""

    def fetch(self, record_ids: Sequence[int]) -> Mapping[int, str]: ...


class Refusal(Protocol):
    """A text the model did not classify, in place of its prediction, and why."""

    reason: str


class ServedModel(Protocol):
    """The model a server reports: its id and weights digest (None: it gives none)."""

    model: str
    model_digest: str | None


class ClassifierAnswer(Protocol):
    """Answers in the order of the texts (predictions or refusals), and the model that made
    them (``model`` "" when no text reached it)."""

    model: str
    model_digest: str | None
    answers: Sequence[Prediction | Refusal]


class Classifier(Protocol):
    """The model client as the prediction uses it; ``ModelRequestError`` when it refuses."""

    def predict(self, texts: Sequence[str], parameters: PredictParameters) -> ClassifierAnswer: ...


@dataclass(frozen=True)
class BatchOutcome:
    """What a run did with its batch; becomes the materialization's metadata."""

    batch_key: str
    requests: int
    records: int
    predicted: list[int]
    waiting: int
    dead_lettered: int
    model_seconds: float
    # The model id the server reported ("" when no record reached the model).
    model: str = ""
    # The digest of the configuration the predictions were stored under ("": none stored).
    configuration: str = ""
    label_counts: dict[str, int] = field(default_factory=dict)
    # Records the model server refused on their own: dead letters of source "model".
    refused: int = 0
    # When the first text went to the model (None: no record reached it). Against the run's
    # launch and start events it splits a run's start-up from its work (bench/bench_launcher.py).
    model_started_at: datetime | None = None
    # The parameters the batch was sent with: the deployment's, or its rollout's candidate's.
    parameters: PredictParameters | None = None
    # The candidate digest when the batch belongs to a rollout ("": an ordinary batch).
    rollout: str = ""


def parameters_of(parameters: PredictParameters) -> Parameters:
    """The receipt's view of a request's parameters (the same four fields)."""
    return Parameters(
        candidate_labels=tuple(parameters.candidate_labels),
        hypothesis_template=parameters.hypothesis_template,
        label_descriptions=parameters.label_descriptions,
        multi_label=parameters.multi_label,
    )


def predict_parameters_of(parameters: Parameters) -> PredictParameters:
    """The request parameters a receipt's parameters stand for (``parameters_of`` reversed)."""
    return PredictParameters(
        candidate_labels=tuple(parameters.candidate_labels),
        multi_label=parameters.multi_label,
        hypothesis_template=parameters.hypothesis_template,
        label_descriptions={k: tuple(v) for k, v in parameters.label_descriptions.items()},
    )


class CandidateModelChangedError(RuntimeError):
    """A rollout's batch was answered by another model than the one its candidate names."""


def configuration_of(parameters: PredictParameters, model: ModelIdentity) -> Configuration:
    """The prediction configuration of requests with ``parameters`` answered by ``model``."""
    return Configuration(model=model, parameters=parameters_of(parameters))


def deployment_of(parameters: PredictParameters, served: ServedModel | None) -> Deployment:
    """What staleness compares with: the settings' parameters, and the served model if known."""
    model = (
        ModelIdentity(served.model, served.model_digest or UNKNOWN) if served is not None else None
    )
    return Deployment(parameters=parameters_of(parameters), model=model)


class BatchRefusedError(RuntimeError):
    """The model server refused the batch (4xx): its requests are now dead letters."""

    def __init__(self, batch_key: str, reason: str, dead_lettered: int) -> None:
        super().__init__(f"batch {batch_key}: {reason}")
        self.batch_key = batch_key
        self.dead_lettered = dead_lettered


@dataclass(frozen=True)
class Predictor:
    """The collaborators of a prediction run, which travel together to every batch it predicts."""

    engine: Engine
    feature_store: TextSource
    model: Classifier
    parameters: PredictParameters
    feature_wait: timedelta
    clock: Callable[[], datetime] = db.utcnow

    def configuration(self, model: ModelIdentity) -> Configuration:
        """The configuration of this predictor's requests when ``model`` answers them."""
        return configuration_of(self.parameters, model)

    def predict(self, batch_key: str, run_id: str) -> BatchOutcome:
        """Predict every record of a batch once and settle its requests.

        A record requested twice is predicted once. Errors leave the batch as it was, except
        that the ledger records them: a refusal (``ModelRequestError``) dead-letters the batch's
        requests and raises ``BatchRefusedError``; anything else marks the batch failed (the
        sensor's reconcile retries it) and propagates, a ``TransientModelError`` included.
        """
        try:
            return self._predict(batch_key, run_id)
        except ModelRequestError as exc:
            reason = f"model server refused the batch: {exc}"
            dead = ledger.dead_letter_batch(self.engine, batch_key, reason=reason, now=self.clock())
            raise BatchRefusedError(batch_key, reason, dead) from exc
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            ledger.fail_batch(self.engine, batch_key, error=error, now=self.clock())
            raise

    def _predict(self, batch_key: str, run_id: str) -> BatchOutcome:
        candidate = rollout.candidate_of_batch(self.engine, batch_key)
        parameters = self.parameters
        feature_wait = self.feature_wait
        if candidate is not None:
            parameters = predict_parameters_of(candidate.configuration.parameters)
            # A rollout only asks for records that were predicted, so a record missing now was
            # deleted: dead-lettered at once rather than re-batched into an ordinary batch.
            feature_wait = timedelta(0)
        requests = ledger.start_batch(self.engine, batch_key, run_id=run_id, now=self.clock())
        record_ids = sorted({r.record_id for r in requests})
        if candidate is not None and candidate.status is not rollout.RolloutStatus.RUNNING:
            record_ids = []  # closed: settled without calling the model (settle_batch)
        texts = self.feature_store.fetch(record_ids) if record_ids else {}
        found = [record_id for record_id in record_ids if record_id in texts]
        model_started_at = self.clock() if found else None
        started = time.perf_counter()
        answer = self.model.predict([texts[i] for i in found], parameters) if found else None
        model_seconds = time.perf_counter() - started
        predictions: dict[int, Prediction] = {}
        refused: dict[int, str] = {}
        for record_id, result in zip(found, answer.answers if answer else [], strict=True):
            if isinstance(result, Prediction):
                predictions[record_id] = result
            else:
                refused[record_id] = f"the model server refused record {record_id}: {result.reason}"
        model = answer.model if answer is not None else ""
        configuration = (
            configuration_of(parameters, ModelIdentity(model, answer.model_digest or UNKNOWN))
            if answer is not None and model
            else None
        )
        if (
            candidate is not None
            and configuration is not None
            and configuration.digest != candidate.digest
        ):
            started_with = candidate.configuration.model
            raise CandidateModelChangedError(
                f"batch {batch_key} of rollout {candidate.digest}: answered by {model} "
                f"(weights {configuration.model.weights_digest}), but the rollout was started "
                f"with {started_with.name} (weights {started_with.weights_digest}); discard "
                "the rollout and start it again against the model served now"
            )
        waiting, dead = ledger.settle_batch(
            self.engine,
            ledger.Settlement(
                batch_key=batch_key,
                run_id=run_id,
                requests=requests,
                configuration=configuration,
                answers=predictions,
                refused=refused,
                feature_wait=feature_wait,
                now=self.clock(),
                text_digests={
                    record_id: text_digest(texts[record_id]) for record_id in predictions
                },
                rollout=candidate.digest if candidate is not None else None,
                model_seconds=model_seconds if answer is not None else None,
            ),
        )
        return BatchOutcome(
            batch_key=batch_key,
            requests=len(requests),
            records=len(record_ids),
            predicted=sorted(predictions),
            waiting=waiting,
            dead_lettered=dead,
            model_seconds=model_seconds,
            model=model,
            configuration=configuration.digest if configuration is not None else "",
            label_counts=dict(Counter(p.labels[0] for p in predictions.values() if p.labels)),
            refused=len(refused),
            model_started_at=model_started_at,
            parameters=parameters,
            rollout=candidate.digest if candidate is not None else "",
        )
