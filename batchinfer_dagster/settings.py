"""The one place batchinfer reads its configuration from.

Every ``BATCHINFER_*`` variable of the design's configuration table is a typed field here with its
embedded default, so a laptop needs no environment at all and production only overrides. Nothing
else in the package reads ``os.environ``: resources and commands receive a ``Settings``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batchinfer_protocol.zero_shot import (
    DEFAULT_LABELS,
    LabelDescriptions,
    ParameterError,
    check_hypothesis_template,
    check_label_descriptions,
)


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
    model_name: str = "zero-shot"
    model_timeout_seconds: float = 120.0
    model_chunk_size: int = 256
    labels: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LABELS
    multi_label: bool = False
    # None: the model server's default (the pipeline's "This example is {}." for nli; the
    # labels' descriptions, or their names in several templates, for embedding).
    hypothesis_template: str | None = None
    # A JSON file {label: [description, ...]} sent as the label_descriptions request parameter.
    label_descriptions_file: Path | None = None

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

    @field_validator("hypothesis_template")
    @classmethod
    def _template_has_a_slot(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_hypothesis_template(value)
        except ParameterError as error:
            raise ValueError(f"BATCHINFER_HYPOTHESIS_TEMPLATE: {error}") from error

    @cached_property
    def label_descriptions(self) -> LabelDescriptions:
        """The descriptions file's ``{label: (description, ...)}``; empty when none is set.

        Read on first use and checked with the server's own rule, so a bad file fails the run
        that sends it with the file's name in the error, not each request with a 422.
        """
        if self.label_descriptions_file is None:
            return {}
        path = self.label_descriptions_file
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return check_label_descriptions(raw)
        except (OSError, json.JSONDecodeError, ParameterError) as error:
            raise ValueError(
                f"BATCHINFER_LABEL_DESCRIPTIONS_FILE={path}: {error}; it must be a JSON object "
                '{"label": ["description", ...]}'
            ) from error

    @cached_property
    def resolved_database_url(self) -> str:
        """The app database: ``BATCHINFER_DATABASE_URL`` or SQLite under ``BATCHINFER_HOME``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'batchinfer.db').resolve()}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides winning (tests, CLI options)."""
    return Settings(**overrides)
