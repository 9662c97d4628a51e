"""The ``batchinfer`` command run through click's runner against a test's settings.

Shared by the CLI tests of every tier: the settings travel as the environment variables a user
would set, so each command reads them as the real console script does.
"""

from __future__ import annotations

import json

from click.testing import CliRunner, Result

from batchinfer_dagster.cli import cli
from batchinfer_dagster.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    env = {
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "BATCHINFER_QUEUE": settings.queue,
        "BATCHINFER_PUBSUB_TOPIC": settings.pubsub_topic,
        "BATCHINFER_PUBSUB_SUBSCRIPTION": settings.pubsub_subscription,
        "BATCHINFER_MODEL_URL": settings.model_url,
    }
    if settings.pubsub_emulator_host:
        env["PUBSUB_EMULATOR_HOST"] = settings.pubsub_emulator_host
    return env


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=settings_env(settings), catch_exceptions=False)


def lines(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
