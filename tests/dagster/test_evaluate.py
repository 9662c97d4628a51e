"""`batchinfer evaluate` through the real model server matches a count of its direct answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchinfer_dagster.cli import cli
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.deployment import model_client_of
from batchinfer_testing.processes import free_port

EXAMPLES = [
    ("I was charged twice, please refund me.", "billing"),
    ("Where is my invoice for March?", "billing"),
    ("The app crashes on my phone.", "mobile"),
    ("The website checkout page does not load.", "website"),
    ("I cannot log in to my account.", "account access"),
    ("My password reset email never arrives.", "account access"),
    ("Can I change the colour of my car?", "other"),
]


@pytest.mark.parametrize("server", ["deployment", "candidate"])
def test_evaluate_counts_what_the_model_server_answers(
    tmp_path: Path, model_server_url: str, server: str
) -> None:
    """The deployment's model server, or a candidate's named by ``--model-url`` while the
    deployment's URL answers nothing (so only the candidate can have classified the texts)."""
    path = tmp_path / "labelled.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(EXAMPLES)
    deployment_url = model_server_url
    arguments = ["evaluate", str(path)]
    if server == "candidate":
        deployment_url = f"http://127.0.0.1:{free_port()}"
        arguments += ["--model-url", model_server_url]
    env = {"BATCHINFER_HOME": str(tmp_path), "BATCHINFER_MODEL_URL": deployment_url}
    result = CliRunner().invoke(cli, arguments, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])

    client = model_client_of(Settings(), url=model_server_url)
    try:
        answer = client.predict([text for text, _ in EXAMPLES], PredictParameters())
    finally:
        client.close()
    predicted = [prediction.labels[0] for prediction in answer.predictions]
    truth = [label for _, label in EXAMPLES]
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    assert report["examples"] == len(EXAMPLES)
    assert report["accuracy"] == correct / len(EXAMPLES)
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, predicted, strict=True):
        confusion.setdefault(t, {}).setdefault(p, 0)
        confusion[t][p] += 1
    assert report["confusion"] == confusion
    billing = report["per_label"]["billing"]
    said_billing = predicted.count("billing")
    hits = sum(p == t == "billing" for p, t in zip(predicted, truth, strict=True))
    assert billing["precision"] == (hits / said_billing if said_billing else 0.0)
    assert billing["recall"] == hits / 2
    assert report["labels_not_candidates"] == ["other"]
    assert report["per_label"]["other"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    assert report["refused"] == []
    assert report["model"] == answer.model
    assert report["model_url"] == (model_server_url if server == "candidate" else None)
