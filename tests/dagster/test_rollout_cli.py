"""`batchinfer rollout` through the real model server: the report equals a direct comparison of
the stored rows, a second start resumes with nothing left, promote makes the candidate current."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner, Result

from batchinfer_dagster import db, ledger
from batchinfer_dagster.cli import cli
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity, text_digest
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.deployment import TEXTS, engine_of, model_client_of, rows

RECORDS = 120


def run(settings: Settings, *args: str) -> Result:
    env = {
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "BATCHINFER_MODEL_URL": settings.model_url,
    }
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def last_json(result: Result) -> dict:
    return json.loads(result.stdout.splitlines()[-1])


def test_rollout_report_matches_a_direct_comparison_and_promote_switches(
    app_settings: Settings, model_server_url: str, tmp_path: Path
) -> None:
    settings = app_settings.model_copy(update={"model_url": model_server_url})
    engine = engine_of(settings)
    texts = [f"{TEXTS[i % len(TEXTS)]} (ticket {i})" for i in range(RECORDS)]
    ids = add_records(engine, texts)
    LocalFeatureStore(engine).import_records()
    client = model_client_of(settings)
    try:
        answer = client.predict(texts, PredictParameters())
    finally:
        client.close()
    current = configuration_of(
        PredictParameters(), ModelIdentity(answer.model, answer.model_digest or UNKNOWN)
    )
    with engine.begin() as connection:
        ledger.write_predictions(
            connection,
            dict(zip(ids, answer.predictions, strict=True)),
            configuration=current,
            text_digests={i: text_digest(t) for i, t in zip(ids, texts, strict=True)},
            batch_key="b",
            run_id="r",
            now=db.utcnow(),
        )
    descriptions = tmp_path / "candidate.json"
    descriptions.write_text(
        json.dumps({"billing": ["Anything about money, prices or the account's plan."]})
    )

    started = last_json(
        run(settings, "rollout", "start", "--label-descriptions", str(descriptions))
    )
    candidate = started["candidate"]
    assert (started["records"], started["predicted"], started["refused"]) == (RECORDS, RECORDS, 0)
    resumed = last_json(
        run(settings, "rollout", "start", "--label-descriptions", str(descriptions))
    )
    assert (resumed["candidate"], resumed["predicted"]) == (candidate, 0)

    stored = rows(settings, db.predictions)
    now = {r.record_id: r for r in stored if r.configuration == current.digest}
    then = {r.record_id: r for r in stored if r.configuration == candidate}
    assert sorted(now) == sorted(then) == sorted(ids)
    agreeing = sum(now[i].labels[0] == then[i].labels[0] for i in ids)
    confusion = Counter((now[i].labels[0], then[i].labels[0]) for i in ids)
    mean_delta = sum(abs(then[i].scores[0] - now[i].scores[0]) for i in ids) / RECORDS

    report = last_json(run(settings, "rollout", "report", candidate))
    assert report["compared"] == RECORDS
    assert report["agreement"] == agreeing / RECORDS
    assert {(a, b): n for a, row in report["confusion"].items() for b, n in row.items()} == dict(
        confusion
    )
    assert abs(report["mean_abs_top_score_delta"] - mean_delta) < 1e-9
    assert all(d["current_label"] != d["candidate_label"] for d in report["largest_disagreements"])

    promoted = last_json(run(settings, "rollout", "promote", candidate))
    assert promoted["promoted"] == RECORDS
    currents = {
        r.configuration for r in rows(settings, db.predictions, db.predictions.c.is_current)
    }
    assert currents == {candidate}
    assert len(rows(settings, db.predictions)) == 2 * RECORDS
