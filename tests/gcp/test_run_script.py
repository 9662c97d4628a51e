"""deploy/run.sh and deploy/wait-for-prediction.sh against a fake `gcloud` (and `terraform`) on
PATH that answer as the real ones do: the job execution's name, then the execution's log
entries as `gcloud logging read --format=json` prints them, a CLI answer in ``jsonPayload``
(Cloud Run's logging agent turns a one-line JSON object on stdout into that) and other output
in ``textPayload``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXECUTION = "batchinfer-cli-x7k2p"
FAKE_GCLOUD = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >>"${FAKE_CALLS}"
case "$1 $2" in
  "run jobs") echo "batchinfer-cli-x7k2p"; exit "${FAKE_EXIT:-0}" ;;
  "logging read")
    case "$*" in
      *--format=json*) cat "${FAKE_ENTRIES}" ;;
      *"--format=value(textPayload)"*)
        python3 -c 'import json, sys
for e in json.load(open(sys.argv[1])): print(e.get("textPayload", ""))' "${FAKE_ENTRIES}" ;;
      *) echo "fake gcloud: unexpected format in $*" >&2; exit 2 ;;
    esac ;;
  *) echo "fake gcloud: unexpected $*" >&2; exit 2 ;;
esac
"""
FAKE_TERRAFORM = """#!/usr/bin/env bash
echo batchinfer-cli
"""


def entry(**payload: object) -> dict[str, object]:
    """A Cloud Logging LogEntry of a Cloud Run job execution, as gcloud prints it."""
    return {
        "insertId": "65f1a2b3000c1d2e3f4a5b6c",
        "labels": {
            "instanceId": "0069",
            "run.googleapis.com/execution_name": EXECUTION,
            "run.googleapis.com/task_attempt": "0",
            "run.googleapis.com/task_index": "0",
        },
        "logName": "projects/my-batchinfer-prod/logs/run.googleapis.com%2Fstdout",
        "receiveTimestamp": "2026-12-05T09:00:02.123456789Z",
        "resource": {
            "labels": {
                "job_name": "batchinfer-cli",
                "location": "europe-west4",
                "project_id": "my-batchinfer-prod",
            },
            "type": "cloud_run_job",
        },
        "severity": "DEFAULT",
        "timestamp": "2026-12-05T09:00:01.987654Z",
        **payload,
    }


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A copy of deploy/ with its deploy.env, and the fakes first on PATH."""
    deploy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", deploy, ignore=shutil.ignore_patterns("deploy.env"))
    (deploy / "deploy.env").write_text(
        "PROJECT_ID=my-batchinfer-prod\nREGION=europe-west4\nBUILD_REGION=us-central1\n"
        "NAME_PREFIX=batchinfer\nIMAGE_TAG=v1\nREGISTRY=r\nSTATE_BUCKET=b\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("terraform", FAKE_TERRAFORM)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run(deployment: Path, script: str, *args: str, entries: list[dict], exit_code: int = 0):
    (deployment / "entries.json").write_text(json.dumps(entries))
    env = {
        **os.environ,
        "PATH": f"{deployment / 'bin'}:{os.environ['PATH']}",
        "FAKE_CALLS": str(deployment / "calls"),
        "FAKE_ENTRIES": str(deployment / "entries.json"),
        "FAKE_EXIT": str(exit_code),
    }
    return subprocess.run(
        [str(deployment / "deploy" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_prints_the_clis_json_answer_and_its_text_output(deployment: Path) -> None:
    entries = [
        entry(textPayload="INFO alembic: context impl PostgresqlImpl."),
        # Cloud Logging keeps a Struct: its numbers are doubles.
        entry(jsonPayload={"id": 1.0, "text": "My phone app crashes, every time"}),
        entry(protoPayload={"@type": "type.googleapis.com/google.cloud.audit.AuditLog"}),
    ]
    result = run(
        deployment,
        "run.sh",
        "batchinfer",
        "add-data-point",
        "My phone app crashes, every time",
        entries=entries,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "INFO alembic: context impl PostgresqlImpl.",
        '{"id": 1, "text": "My phone app crashes, every time"}',
    ]
    calls = (deployment / "calls").read_text().splitlines()
    assert calls[0].startswith("run jobs execute batchinfer-cli --region=europe-west4 --wait")
    assert "--args=^|^batchinfer|add-data-point|My phone app crashes, every time" in calls[0]
    reads = [call for call in calls if call.startswith("logging read")]
    assert reads
    assert f'labels."run.googleapis.com/execution_name"="{EXECUTION}"' in reads[0]
    assert "--format=json" in reads[0]


def test_run_exits_with_the_executions_outcome(deployment: Path) -> None:
    result = run(
        deployment,
        "run.sh",
        "batchinfer",
        "prediction",
        "1",
        entries=[entry(textPayload="no prediction for record 1 yet")],
        exit_code=1,
    )
    assert result.returncode == 1
    assert result.stdout == "no prediction for record 1 yet\n"


PREDICTION = {
    "data": {"id": 1.0, "text": "My phone app crashes, every time"},
    "prediction": {
        "sequence": "My phone app crashes, every time",
        "labels": ["mobile", "website"],
        "scores": [0.91, 0.09],
    },
}


def test_wait_for_prediction_finds_it_in_the_json_payload(deployment: Path) -> None:
    result = run(
        deployment, "wait-for-prediction.sh", "1", "0", entries=[entry(jsonPayload=PREDICTION)]
    )
    assert result.returncode == 0, result.stderr
    assert '"prediction": {"sequence": "My phone app crashes, every time"' in result.stderr


def test_wait_for_prediction_gives_up_while_there_is_none(deployment: Path) -> None:
    result = run(
        deployment,
        "wait-for-prediction.sh",
        "1",
        "0",
        entries=[entry(textPayload="no prediction for record 1 yet")],
        exit_code=1,
    )
    assert result.returncode == 1
    assert "gave up after 0 s" in result.stderr
