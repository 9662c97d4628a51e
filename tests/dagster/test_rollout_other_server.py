"""A rollout whose candidate is another model, on another model server, started from the
launchpad (``start_rollout_job``) and run as ordinary ``predictions`` partitions.

Two real model servers serve two tiny NLI models built with different seeds (same
architecture, other weights, so other digests). Current predictions come from server A; the
rollout names server B. The candidate's rows must carry B's weights digest and B's own scores
(asked of B directly), the report must name both models and equal a direct comparison, and
promote (also a launchpad job) must make B's predictions current.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from dagster import DagsterInstance

from batchinfer_dagster import db, rollout
from batchinfer_dagster.cli import cli
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.rollout_defs import ROLLOUTS
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.contender import seed_current
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import (
    engine_of,
    model_client_of,
    model_server_of,
    resources_of,
    rows,
)
from batchinfer_testing.model_server import running_model_server
from batchinfer_testing.nli_models import RandomInit, build_bert_nli

RECORDS = 40
BATCH_SIZE = 16  # 3 rollout batches, the last one short


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """URLs of two model servers on two tiny NLI checkpoints with different weights."""
    urls = []
    with (
        running_model_server(
            MODEL_BACKEND="nli",
            MODEL_NAME_OR_PATH=str(
                build_bert_nli(tmp_path_factory.mktemp("a"), init=RandomInit(seed=0, std=0.3))
            ),
            MODEL_WARMUP="false",
        ) as first,
        running_model_server(
            MODEL_BACKEND="nli",
            MODEL_NAME_OR_PATH=str(
                build_bert_nli(tmp_path_factory.mktemp("b"), init=RandomInit(seed=1, std=0.3))
            ),
            MODEL_WARMUP="false",
        ) as second,
    ):
        urls = [first.url, second.url]
        yield urls[0], urls[1]


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()


def test_a_candidate_on_another_server_is_predicted_there_and_compared(
    app_settings: Settings,
    two_servers: tuple[str, str],
    instance: DagsterInstance,
    tmp_path: Path,
) -> None:
    url_a, url_b = two_servers
    digest_a, digest_b = health(url_a)["model_digest"], health(url_b)["model_digest"]
    assert digest_a != digest_b
    settings = app_settings.model_copy(update={"model_url": url_a, "batch_size": BATCH_SIZE})
    seeded = seed_current(settings, RECORDS)
    ids, texts, current = seeded.ids, seeded.texts, seeded.configuration
    defs = build_definitions(resources_of(settings))

    started_run = defs.resolve_job_def("start_rollout_job").execute_in_process(
        instance=instance, run_config={"ops": {"start_rollout": {"config": {"model_url": url_b}}}}
    )
    started = started_run.output_for_node("start_rollout")
    candidate = started["candidate"]
    assert (started["requested"], started["skipped"], started["batches"]) == (RECORDS, 0, 3)
    assert candidate != current  # same parameters, other weights: another configuration

    loop = run_daemon_loop(instance, settings, expect=RECORDS)
    assert len(loop.runs) == 3
    assert all(result.success for result in loop.runs)
    for result in loop.runs:
        (materialization,) = result.asset_materializations_for_node("predictions")
        assert materialization.metadata["rollout"].value == candidate
        assert all(check.passed for check in result.get_asset_check_evaluations())

    # The candidate's rows are B's answers: B's digest, and the scores B gives when asked.
    stored = rows(settings, db.predictions)
    now = {r.record_id: r for r in stored if r.configuration == current}
    then = {r.record_id: r for r in stored if r.configuration == candidate}
    assert sorted(now) == sorted(then) == sorted(ids)
    weights = {r.digest: r.model_digest for r in rows(settings, db.prediction_configurations)}
    assert (weights[current], weights[candidate]) == (digest_a, digest_b)
    direct = model_client_of(settings.model_copy(update={"model_url": url_b}))
    try:
        from_b = direct.predict(texts, PredictParameters()).predictions
    finally:
        direct.close()
    for record_id, expected in zip(ids, from_b, strict=True):
        assert then[record_id].labels == expected.labels
        assert then[record_id].scores == pytest.approx(expected.scores, abs=1e-6)
    assert any(now[i].scores != then[i].scores for i in ids)

    report = rollout.report(engine_of(settings), candidate)
    assert report.candidate_model_url == url_b
    assert [(s.configuration, s.model_digest, s.records) for s in report.current_models] == [
        (current, digest_a, RECORDS)
    ]
    assert report.candidate_model is not None
    assert (report.candidate_model.model_digest, report.candidate_model.records) == (
        digest_b,
        RECORDS,
    )
    agreeing = sum(now[i].labels[0] == then[i].labels[0] for i in ids)
    assert (report.compared, report.agreeing) == (RECORDS, agreeing)
    mean_delta = sum(abs(then[i].scores[0] - now[i].scores[0]) for i in ids) / RECORDS
    assert report.mean_abs_top_score_delta == pytest.approx(mean_delta)
    assert report.dead_letters == {"refused": 0, "missing": 0, "failed": 0}
    # B's measured texts/s: its three batches' model time, as the runs measured it. The current
    # rows were written directly (no ledger batch measured them).
    batches = rows(settings, db.prediction_batches)
    assert sorted(b.predicted for b in batches) == [
        RECORDS - 2 * BATCH_SIZE,
        BATCH_SIZE,
        BATCH_SIZE,
    ]
    seconds = sum(b.model_seconds for b in batches)
    assert report.texts_per_second == {
        "current": None,
        "candidate": pytest.approx(RECORDS / seconds),
    }

    # The report asset names both sides' models in its metadata (what the UI shows).
    instance.add_dynamic_partitions(ROLLOUTS, [candidate])
    report_run = defs.resolve_job_def("rollout_report_job").execute_in_process(
        instance=instance, partition_key=candidate
    )
    (materialization,) = report_run.asset_materializations_for_node("rollout_report")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    models = metadata["models"].splitlines()
    assert any("current" in line and digest_a in line for line in models)
    assert any("candidate" in line and digest_b in line for line in models)
    assert metadata["candidate_model_url"] == url_b
    assert (metadata["records_refused"], metadata["records_missing"]) == (0, 0)

    promoted = defs.resolve_job_def("promote_rollout_job").execute_in_process(
        instance=instance,
        run_config={"ops": {"promote_rollout": {"config": {"candidate": candidate}}}},
    )
    assert promoted.success
    currents = rows(settings, db.predictions, db.predictions.c.is_current)
    assert {r.configuration for r in currents} == {candidate}
    assert len(currents) == RECORDS


def test_the_launchpad_start_refuses_bad_input_with_the_value(
    app_settings: Settings, two_servers: tuple[str, str], instance: DagsterInstance
) -> None:
    """Repeated labels, or a server that reports no model: a failed run naming why, no rollout."""
    url_a, _ = two_servers
    settings = app_settings.model_copy(update={"model_url": url_a, "batch_size": BATCH_SIZE})
    seed_current(settings, RECORDS)
    job = build_definitions(resources_of(settings)).resolve_job_def("start_rollout_job")

    def failure(config: dict) -> str:
        result = job.execute_in_process(
            instance=instance,
            run_config={"ops": {"start_rollout": {"config": config}}},
            raise_on_error=False,
        )
        assert not result.success
        (event,) = [e for e in result.all_events if e.is_step_failure]
        return event.step_failure_data.error.message

    assert "billing" in failure({"labels": ["billing", "billing"]})
    assert "does not report its model" in failure({"model_url": "http://127.0.0.1:9"})
    assert not rows(settings, db.rollouts)
    assert not rows(settings, db.rollout_batches)


def test_a_candidate_server_of_the_other_kind_is_refused_naming_it(
    app_settings: Settings,
) -> None:
    """The resource keyed by URL keeps its kind: an HTTP deployment takes no Vertex endpoint."""
    endpoint = "vertex://projects/p/locations/europe-west1/endpoints/7"
    server = model_server_of(app_settings.model_copy(update={"model_url": "http://127.0.0.1:9"}))
    with pytest.raises(ValueError, match=endpoint):
        server.client(endpoint)
    assert server.config("http://other:8080").url == "http://other:8080"
    assert server.config().url == "http://127.0.0.1:9"


def test_the_cli_starts_the_same_candidate_on_another_server(
    app_settings: Settings, two_servers: tuple[str, str]
) -> None:
    """`rollout start --model-url` names the candidate by the other server's model."""
    url_a, url_b = two_servers
    settings = app_settings.model_copy(update={"model_url": url_a, "batch_size": BATCH_SIZE})
    seed_current(settings, RECORDS)
    env = {
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "BATCHINFER_MODEL_URL": url_a,
        "BATCHINFER_BATCH_SIZE": str(BATCH_SIZE),
    }
    args = ["rollout", "start", "--model-url", url_b, "--sample", "5"]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout.splitlines()[-1])
    served = health(url_b)
    expected = configuration_of(
        PredictParameters(), ModelIdentity(served["model"], served["model_digest"])
    )
    assert (started["candidate"], started["requested"]) == (expected.digest, 5)
    (row,) = rows(settings, db.rollouts)
    assert row.model_url == url_b

    refused = CliRunner().invoke(
        cli, ["rollout", "start", "--model-url", "http://127.0.0.1:9"], env=env
    )
    assert refused.exit_code == 1
    assert "does not report its model" in refused.output
