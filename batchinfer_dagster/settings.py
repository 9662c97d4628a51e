"""The one place batchinfer reads its configuration from.

Every ``BATCHINFER_*`` variable of docs/architecture.md's configuration table is a typed field here
with its embedded default, so a laptop needs no environment at all and production only overrides.
Nothing else in the package reads ``os.environ``: ``batchinfer_dagster.deployments`` turns a
``Settings`` into the Dagster resources, and the CLI builds its clients through the same resources.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batchinfer_protocol.zero_shot import DEFAULT_HYPOTHESIS_TEMPLATE, DEFAULT_LABELS


class Settings(BaseSettings):
    """Typed settings read from ``BATCHINFER_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="BATCHINFER_", frozen=True, extra="ignore")

    home: Path = Path(".batchinfer")
    database_url: str | None = None

    queue: Literal["local", "pubsub"] = "local"
    pubsub_project: str = "local-project"
    pubsub_topic: str = "prediction-requests"
    pubsub_subscription: str = "prediction-requests-sub"
    pubsub_dead_letter_topic: str = "prediction-requests-dead-letter"
    pubsub_dead_letter_subscription: str = "prediction-requests-dead-letter-sub"
    pubsub_emulator_host: str | None = Field(
        default=None, validation_alias=AliasChoices("PUBSUB_EMULATOR_HOST")
    )
    # Seconds a pulled message stays invisible before it is delivered again (local queue and the
    # ack deadline of the Pub/Sub subscription that `batchinfer pubsub create` makes).
    ack_deadline_seconds: int = 60
    # Deliveries before a never-acked message becomes a dead letter (Pub/Sub's minimum is 5).
    max_delivery_attempts: int = 5

    feature_store: Literal["local", "vertex"] = "local"
    vertex_project: str | None = None
    vertex_region: str = "us-central1"
    vertex_online_store: str = "batchinfer"
    vertex_feature_view: str = "records"
    vertex_bigquery_table: str | None = None
    vertex_api_endpoint: str | None = None
    vertex_sync_timeout_seconds: float = 1800.0

    model_url: str = "http://127.0.0.1:8080"
    # "google-id-token": a Cloud Run model server that only its invokers may call.
    model_auth: Literal["none", "google-id-token"] = "none"
    model_timeout_seconds: float = 120.0
    model_chunk_size: int = 256
    labels: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LABELS
    multi_label: bool = False
    hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE

    batch_size: int = Field(default=512, ge=1)
    max_pull: int = Field(default=5000, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    feature_wait_seconds: float = Field(default=600.0, ge=0)
    pull_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("labels", mode="before")
    @classmethod
    def _split_labels(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(label.strip() for label in value.split(",") if label.strip())
        if isinstance(value, list | tuple) and not value:
            raise ValueError("BATCHINFER_LABELS needs at least one label, e.g. 'mobile,billing'")
        return value

    @cached_property
    def resolved_database_url(self) -> str:
        """The app database: ``BATCHINFER_DATABASE_URL`` or SQLite under ``BATCHINFER_HOME``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'batchinfer.db').resolve()}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides winning (tests, CLI options)."""
    return Settings(**overrides)
