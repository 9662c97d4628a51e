"""`batchinfer rollout` through partitioned runs and the real model server.

``rollout start`` writes ledger batches; the sensor launches ordinary ``predictions`` runs for
them (the daemon loop of ``batchinfer_testing.daemon``), which store candidate rows beside the
current ones. The report (CLI and the ``rollout_report`` asset) equals a direct comparison of
the stored rows, a second start requests nothing, promote is refused while requests are open
and then makes the candidate current; discard closes a rollout so its runs write nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from click.testing import CliRunner, Result
from dagster import DagsterInstance, build_sensor_context

from batchinfer_dagster import db
from batchinfer_dagster.cli import cli
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.rollout_defs import ROLLOUTS, rollout_reports_sensor
from batchinfer_dagster.settings import Settings
from batchinfer_testing.contender import current_rows, seed_current
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import (
    resources_of,
    rows,
)

RECORDS = 120
BATCH_SIZE = 32  # 4 rollout batches, the last one short


def run(settings: Settings, *args: str, exit_code: int = 0) -> Result:
    env = {
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "BATCHINFER_MODEL_URL": settings.model_url,
        "BATCHINFER_BATCH_SIZE": str(settings.batch_size),
    }
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return result


def last_json(result: Result) -> dict:
    return json.loads(result.stdout.splitlines()[-1])


def candidate_descriptions(tmp_path: Path) -> str:
    path = tmp_path / "candidate.json"
    path.write_text(
        json.dumps({"billing": ["Anything about money, prices or the account's plan."]})
    )
    return str(path)


def test_a_rollout_runs_as_partitions_reports_like_a_direct_comparison_and_promotes(
    app_settings: Settings, model_server_url: str, instance: DagsterInstance, tmp_path: Path
) -> None:
    settings = app_settings.model_copy(
        update={"model_url": model_server_url, "batch_size": BATCH_SIZE}
    )
    seeded = seed_current(settings, RECORDS)
    ids, current = seeded.ids, seeded.configuration
    before = current_rows(settings)
    descriptions = candidate_descriptions(tmp_path)

    started = last_json(run(settings, "rollout", "start", "--label-descriptions", descriptions))
    candidate = started["candidate"]
    assert (started["requested"], started["skipped"], started["batches"]) == (RECORDS, 0, 4)
    waiting = last_json(run(settings, "rollout", "report", candidate))
    assert waiting["progress"]["open"] == RECORDS
    assert waiting["compared"] == 0
    refused = run(settings, "rollout", "promote", candidate, exit_code=1)
    assert f"{RECORDS} requests still open" in refused.output

    loop = run_daemon_loop(instance, settings, expect=RECORDS)
    assert len(loop.runs) == 4
    assert all(result.success for result in loop.runs)
    for result in loop.runs:
        (materialization,) = result.asset_materializations_for_node("predictions")
        assert materialization.metadata["rollout"].value == candidate
        assert all(check.passed for check in result.get_asset_check_evaluations())
    # Candidate rows never replace the current ones before promotion.
    assert current_rows(settings) == before

    resumed = last_json(run(settings, "rollout", "start", "--label-descriptions", descriptions))
    assert (resumed["candidate"], resumed["requested"], resumed["skipped"]) == (
        candidate,
        0,
        RECORDS,
    )

    stored = rows(settings, db.predictions)
    now = {r.record_id: r for r in stored if r.configuration == current}
    then = {r.record_id: r for r in stored if r.configuration == candidate}
    assert sorted(now) == sorted(then) == sorted(ids)
    agreeing = sum(now[i].labels[0] == then[i].labels[0] for i in ids)
    confusion = Counter((now[i].labels[0], then[i].labels[0]) for i in ids)
    mean_delta = sum(abs(then[i].scores[0] - now[i].scores[0]) for i in ids) / RECORDS

    report = last_json(run(settings, "rollout", "report", candidate))
    assert report["progress"] == {
        "candidate": candidate,
        "status": "running",
        "requested": RECORDS,
        "open": 0,
        "predicted": RECORDS,
    }
    assert report["compared"] == RECORDS
    assert report["agreement"] == agreeing / RECORDS
    assert {(a, b): n for a, row in report["confusion"].items() for b, n in row.items()} == dict(
        confusion
    )
    assert abs(report["mean_abs_top_score_delta"] - mean_delta) < 1e-9
    assert all(d["current_label"] != d["candidate_label"] for d in report["largest_disagreements"])

    # The report asset: the sensor registers the rollout's partition and asks for its run once
    # no request is open; the materialization carries the same figures.
    defs = build_definitions(resources_of(settings))
    with build_sensor_context(instance=instance, resources=resources_of(settings)) as context:
        sensor_result = rollout_reports_sensor(context)
    (request,) = sensor_result.run_requests
    assert request.partition_key == candidate
    assert candidate in instance.get_dynamic_partitions(ROLLOUTS)
    report_run = defs.resolve_job_def("rollout_report_job").execute_in_process(
        instance=instance, partition_key=candidate
    )
    (materialization,) = report_run.asset_materializations_for_node("rollout_report")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["records_compared"] == RECORDS
    assert metadata["top_label_agreement"] == round(agreeing / RECORDS, 4)
    assert metadata["mean_abs_top_score_delta"] == round(mean_delta, 4)
    for (now_label, then_label), count in confusion.items():
        if now_label == then_label:
            share = count / sum(n for (a, _), n in confusion.items() if a == now_label)
            assert metadata["agreement_per_label"][now_label] == round(share, 4)

    promoted = last_json(run(settings, "rollout", "promote", candidate))
    assert promoted["promoted"] == RECORDS
    currents = {
        r.configuration for r in rows(settings, db.predictions, db.predictions.c.is_current)
    }
    assert currents == {candidate}
    assert len(rows(settings, db.predictions)) == 2 * RECORDS
    # Promoted: no more report runs, and starting it again is refused.
    with build_sensor_context(instance=instance, resources=resources_of(settings)) as context:
        assert not getattr(rollout_reports_sensor(context), "run_requests", None)
    run(settings, "rollout", "start", "--label-descriptions", descriptions, exit_code=1)


def test_a_discarded_rollout_writes_nothing_when_its_runs_come(
    app_settings: Settings, model_server_url: str, instance: DagsterInstance, tmp_path: Path
) -> None:
    settings = app_settings.model_copy(
        update={"model_url": model_server_url, "batch_size": BATCH_SIZE}
    )
    seed_current(settings, RECORDS)
    before = current_rows(settings)
    started = last_json(
        run(settings, "rollout", "start", "--label-descriptions", candidate_descriptions(tmp_path))
    )
    discarded = last_json(run(settings, "rollout", "discard", started["candidate"]))
    assert discarded["discarded"] == 0

    loop = run_daemon_loop(instance, settings, expect=RECORDS)
    assert len(loop.runs) == 4
    assert all(result.success for result in loop.runs)
    assert not rows(
        settings, db.predictions, db.predictions.c.configuration == started["candidate"]
    )
    assert current_rows(settings) == before
    requests = rows(settings, db.prediction_requests)
    assert Counter(r.status for r in requests) == {"done": RECORDS}
    assert not rows(settings, db.dead_letters)
