"""The one place batchinfer reads its configuration from.

Every ``BATCHINFER_*`` variable of docs/architecture.md's configuration table is a typed field here
with its embedded default, so a laptop needs no environment at all and production only overrides.
Nothing else in the package reads ``os.environ``: ``batchinfer_dagster.deployments`` turns a
``Settings`` into the Dagster resources, and the CLI builds its clients through the same resources.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batchinfer_protocol.zero_shot import (
    DEFAULT_LABELS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_LABELS,
    DEFAULT_MAX_REQUEST_BYTES,
    LabelDescriptions,
    ParameterError,
    check_hypothesis_template,
    check_label_descriptions,
    check_labels,
)

# Pub/Sub's own bounds on a subscription (google.pubsub.v1.Subscription, DeadLetterPolicy).
PUBSUB_ACK_DEADLINE_SECONDS = (10, 600)
PUBSUB_DELIVERY_ATTEMPTS = (5, 100)
ENV_PREFIX = "BATCHINFER_"


def default_home() -> Path:
    """Where batchinfer keeps its state when ``BATCHINFER_HOME`` is unset: the user data directory.

    The platform's own place for an application's data (``$XDG_DATA_HOME/batchinfer``, by default
    ``~/.local/share/batchinfer`` on Linux; ``~/Library/Application Support/batchinfer`` on
    macOS), as ``platformdirs`` resolves it. Not the current directory: ``batchinfer status`` run
    from any folder reads the same database, and a venv installed without the repository (a
    wheel, an image) has a home too. Not the repository: the package does not know where a clone
    is once installed.
    """
    return platformdirs.user_data_path("batchinfer")


class SettingsError(ValueError):
    """A setting that cannot work, in one line naming the variable and what to change."""


def settings_error_line(error: ValidationError) -> str:
    """Pydantic's multi-line report as one line: ``BATCHINFER_X=value: what is wrong; ...``."""
    parts = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:  # a check across fields names its variables itself
            parts.append(message)
            continue
        name = str(item["loc"][0])
        variable = (
            "PUBSUB_EMULATOR_HOST"
            if name == "pubsub_emulator_host"
            else f"{ENV_PREFIX}{name.upper()}"
        )
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r:.120}"
        parts.append(f"{variable}{shown}: {message}")
    return "; ".join(parts)


def _text_encodable(value: str, variable: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{variable} is not valid UTF-8 ({error.reason}); fix its encoding"
        ) from None
    return value


class Settings(BaseSettings):
    """Typed settings read from ``BATCHINFER_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="BATCHINFER_", frozen=True, extra="ignore")

    # Absolute once loaded: a relative BATCHINFER_HOME is resolved against the directory it was
    # given in, so the commands of one shell agree wherever they run.
    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    # Dagster's instance directory; the CLI records its asset events there, so the UI that
    # `make run` serves shows what the CLI did. Unset: $BATCHINFER_HOME/dagster.
    dagster_home: Path | None = Field(
        default=None, validation_alias=AliasChoices("DAGSTER_HOME", "dagster_home")
    )

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
    ack_deadline_seconds: int = Field(default=60, ge=1)
    # Deliveries before a never-acked message becomes a dead letter (Pub/Sub's minimum is 5).
    max_delivery_attempts: int = Field(default=5, ge=1)

    feature_store: Literal["local", "vertex"] = "local"
    vertex_project: str | None = None
    vertex_region: str = "us-central1"
    vertex_online_store: str = "batchinfer"
    vertex_feature_view: str = "records"
    vertex_bigquery_table: str | None = None
    # Endpoint overrides, one per Vertex AI service ("host:port"; None: the service's own):
    # the admin API is regional, an Optimized store serves from its own domain, and a Vertex
    # endpoint predicts from the regional API, so one override for all three cannot be right.
    vertex_admin_endpoint: str | None = None
    vertex_serving_endpoint: str | None = None
    vertex_prediction_endpoint: str | None = None
    vertex_sync_timeout_seconds: float = 1800.0

    model_url: str = "http://127.0.0.1:8080"
    # "google-id-token": a Cloud Run model server that only its invokers may call.
    model_auth: Literal["none", "google-id-token"] = "none"
    model_timeout_seconds: float = Field(default=120.0, gt=0)
    # Texts per request; the server refuses more than MODEL_MAX_INSTANCES (default 1000).
    model_chunk_size: int = Field(default=256, ge=1, le=DEFAULT_MAX_INSTANCES)
    # Bytes per request body; the server refuses more than MODEL_MAX_BODY_BYTES (same default).
    # A single text too large for it is dead-lettered alone, without sending it.
    model_max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    labels: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LABELS
    multi_label: bool = False
    # None: the model server's default (the pipeline's "This example is {}." for nli; the
    # labels' descriptions, or their names in several templates, for embedding).
    hypothesis_template: str | None = None
    # A JSON file {label: [description, ...]} sent as the label_descriptions request parameter.
    label_descriptions_file: Path | None = None

    # A ledger batch closes at batch_size requests or when its oldest request has waited
    # batch_max_wait_seconds (ledger/closing.py): large runs in a backlog, quick answers to a
    # trickle. docs/capacity.md derives both from the measured run start-up and model speed.
    batch_size: int = Field(default=4096, ge=1)
    batch_max_wait_seconds: float = Field(default=15.0, ge=0)
    max_pull: int = Field(default=5000, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    feature_wait_seconds: float = Field(default=600.0, ge=0)
    # A tick long-polls the queue this long when it is empty, so a publish is pulled at once.
    # Under the Dagster daemon's 5 s sensor loop (dagster/_daemon/sensor.py,
    # MIN_INTERVAL_LOOP_TIME; minimum_interval_seconds cannot go below it): a tick that ends
    # before the next loop is followed by the next tick at once, so the queue is watched ~80% of
    # the time instead of half (a 5 s poll made the loop skip every other turn).
    pull_timeout_seconds: float = Field(default=4.0, gt=0)

    def __init__(self, **values: Any) -> None:
        """Read and check the settings; a value that cannot work is one ``SettingsError`` line."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(settings_error_line(error)) from None

    @field_validator("home", "dagster_home")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    @field_validator("labels", mode="before")
    @classmethod
    def _split_labels(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(label.strip() for label in value.split(",") if label.strip())
        if isinstance(value, list | tuple) and not value:
            raise ValueError("needs at least one label, e.g. 'mobile,billing'")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_the_server_accepts(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        """The model server's own check (duplicates, empty, too many), at load, not per batch."""
        for label in labels:
            _text_encodable(label, "a label")
        try:
            return check_labels(labels, max_labels=DEFAULT_MAX_LABELS)
        except ParameterError as error:
            raise ValueError(str(error)) from None

    @field_validator("hypothesis_template")
    @classmethod
    def _template_the_server_accepts(cls, template: str | None) -> str | None:
        if template is None:
            return None
        _text_encodable(template, "the hypothesis template")
        try:
            return check_hypothesis_template(template)
        except ParameterError as error:
            raise ValueError(str(error)) from None

    @field_validator("model_url")
    @classmethod
    def _model_url_has_a_scheme(cls, url: str) -> str:
        """A URL httpx cannot send to fails every batch only after its retries: refuse it now."""
        if url.startswith("vertex://"):
            # Imported here: the Vertex client pulls in the Google libraries.
            from batchinfer_dagster.clients.vertex_model_client import parse_endpoint_url

            parse_endpoint_url(url)
        elif not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise ValueError(
                "needs http://HOST:PORT, https://HOST or "
                "vertex://projects/P/locations/L/endpoints/E"
            )
        return url

    @model_validator(mode="after")
    def _label_descriptions_readable(self) -> Settings:
        """A bad descriptions file would be refused in every request: read it at load."""
        if self.label_descriptions_file is not None:
            _ = self.label_descriptions
        return self

    @model_validator(mode="after")
    def _pubsub_accepts_the_subscription(self) -> Settings:
        """Pub/Sub refuses a subscription outside its bounds (``batchinfer pubsub create``)."""
        if self.queue != "pubsub":
            return self
        low, high = PUBSUB_ACK_DEADLINE_SECONDS
        if not low <= self.ack_deadline_seconds <= high:
            raise ValueError(
                f"BATCHINFER_ACK_DEADLINE_SECONDS={self.ack_deadline_seconds}: Pub/Sub accepts "
                f"{low}..{high} seconds"
            )
        low, high = PUBSUB_DELIVERY_ATTEMPTS
        if not low <= self.max_delivery_attempts <= high:
            raise ValueError(
                f"BATCHINFER_MAX_DELIVERY_ATTEMPTS={self.max_delivery_attempts}: Pub/Sub "
                f"accepts {low}..{high} delivery attempts"
            )
        return self

    @property
    def resolved_dagster_home(self) -> Path:
        """Dagster's instance directory: ``DAGSTER_HOME`` or ``$BATCHINFER_HOME/dagster``."""
        return self.dagster_home or self.home / "dagster"

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

    def state_locations(self) -> dict[str, str]:
        """Where this configuration keeps its state, for ``batchinfer status`` and ``where``.

        Shape: ``{"home", "dagster_home", "database", "queue", "feature_store", "model_url"}``,
        each a path, a URL with its password hidden, or ``local (...)`` naming the table.
        """
        import sqlalchemy as sa  # only here: settings stay importable without the database stack

        database = sa.make_url(self.resolved_database_url).render_as_string(hide_password=True)
        if self.queue == "pubsub":
            where = f"emulator {self.pubsub_emulator_host}" if self.pubsub_emulator_host else "GCP"
            queue = (
                f"pubsub projects/{self.pubsub_project}/topics/{self.pubsub_topic} "
                f"(subscription {self.pubsub_subscription}, {where})"
            )
        else:
            queue = "local (table queue_messages in the database)"
        if self.feature_store == "vertex":
            feature_store = (
                f"vertex projects/{self.vertex_project}/locations/{self.vertex_region}/"
                f"featureOnlineStores/{self.vertex_online_store}/featureViews/"
                f"{self.vertex_feature_view}"
            )
        else:
            feature_store = "local (table features in the database)"
        return {
            "home": str(self.home),
            "dagster_home": str(self.resolved_dagster_home),
            "database": database,
            "queue": queue,
            "feature_store": feature_store,
            "model_url": self.model_url,
        }


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides winning (tests, CLI options)."""
    return Settings(**overrides)
