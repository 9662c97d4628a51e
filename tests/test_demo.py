"""`make demo`: the walkthrough on a real model server and a real Dagster daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_prints_the_prediction_document() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchinfer_tools.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    shown = lines[lines.index("$ batchinfer prediction 1") + 1]
    document = json.loads(shown)
    assert document["data"] == "test input data 1"
    prediction = document["prediction"]
    assert prediction["sequence"] == "test input data 1"
    assert sorted(prediction["labels"]) == sorted(
        ["mobile", "website", "billing", "account access"]
    )
    assert prediction["scores"] == sorted(prediction["scores"], reverse=True)
    assert abs(sum(prediction["scores"]) - 1) < 1e-4
    status = json.loads(lines[-2])
    assert status["predictions"] == 1
    assert status["requests"] == {"done": 1}
    scratch = Path(lines[0].removeprefix("demo in "))
    assert lines[-1] == f"(removed the demo's scratch directory {scratch})"
    assert not scratch.exists()
