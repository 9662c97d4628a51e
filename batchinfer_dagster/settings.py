"""The one place batchinfer reads its configuration from, and the one place a default is written.

Every ``BATCHINFER_*`` variable is a typed field here with its embedded default, bounds and
description, so a laptop needs no environment at all and production only overrides. Resources
and client configs take required values; the configuration tables of docs/architecture.md and
the README are rendered from these fields (``markdown_table``).
Nothing else in the package reads ``os.environ``: ``batchinfer_dagster.defs.deployments`` turns a
``Settings`` into the Dagster resources, and the CLI builds its clients through the same resources.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args, get_origin

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
# A model URL of this scheme names a Vertex AI endpoint rather than our HTTP server.
VERTEX_SCHEME = "vertex://"
# The BigQuery export's tries of a transient failure (a job BigQuery failed with a 5xx or a rate
# limit, after the client's own retries of its API calls): tries in all, and the base of the
# waits in seconds (Dagster's exponential backoff bounds the n-th retry's wait by (2**n - 1) x
# base: 10 s, then 30 s; full jitter draws the wait between 0 and that bound).
EXPORT_TRIES = 3
EXPORT_RETRY_DELAY_SECONDS = 10.0


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


def _cached_names(cls: type) -> set[str]:
    """The names of ``cls``'s ``cached_property`` attributes, inherited ones included."""
    return {
        name
        for klass in cls.__mro__
        for name, value in vars(klass).items()
        if isinstance(value, cached_property)
    }


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
        variable = variable_of(name) if name in Settings.model_fields else name
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
    """Typed settings read from ``BATCHINFER_*`` environment variables.

    Each field's default, bounds and description are written here and nowhere else: resource
    fields borrow the description (``described``), and docs/architecture.md's and the README's
    configuration tables are rendered from these fields (``markdown_table``; a test keeps them
    equal).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="Where the embedded database and Dagster's instance live (the user data "
        "directory by default; `batchinfer where` prints it). Absolute once loaded: a relative "
        "path is resolved against the directory it was given in, so the commands of one shell "
        "agree wherever they run.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the app database, e.g. postgresql+psycopg://user:pw@host/db "
        "(Cloud SQL); unset: SQLite in BATCHINFER_HOME.",
    )
    dagster_home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("DAGSTER_HOME", "dagster_home"),
        description="Dagster's instance directory; the CLI records its asset events there, so the "
        "UI that `make run` serves shows what the CLI did. Unset: $BATCHINFER_HOME/dagster; the "
        "image sets /opt/dagster/dagster_home.",
    )

    queue: Literal["local", "pubsub"] = Field(
        default="local",
        description="Where requests arrive: local (a table with lease, redelivery, dead letters) "
        "or pubsub.",
    )
    pubsub_project: str = Field(
        default="local-project",
        description="Pub/Sub's project (in production, like the names below, from `terraform "
        "output batchinfer_env`).",
    )
    pubsub_topic: str = Field(
        default="prediction-requests", description="Topic that requests are published to."
    )
    pubsub_subscription: str = Field(
        default="prediction-requests-sub", description="Subscription the sensor pulls."
    )
    pubsub_dead_letter_topic: str = Field(
        default="prediction-requests-dead-letter",
        description="Where Pub/Sub moves a message after its delivery attempts.",
    )
    pubsub_dead_letter_subscription: str = Field(
        default="prediction-requests-dead-letter-sub",
        description="Subscription the sensor reads Pub/Sub's dead letters back from.",
    )
    pubsub_emulator_host: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PUBSUB_EMULATOR_HOST"),
        description="host:port of the Pub/Sub emulator; unset: the real service.",
    )
    ack_deadline_seconds: int = Field(
        default=60,
        ge=1,
        description="Seconds a pulled message stays invisible before it is delivered again "
        "(the local queue's lease; the ack deadline of the subscription `batchinfer pubsub "
        "create` makes). Pub/Sub accepts {}..{}.".format(*PUBSUB_ACK_DEADLINE_SECONDS),
    )
    max_delivery_attempts: int = Field(
        default=5,
        ge=1,
        description="Deliveries before a never-acked message becomes a dead letter (Pub/Sub "
        "accepts {}..{}).".format(*PUBSUB_DELIVERY_ATTEMPTS),
    )

    feature_store: Literal["local", "vertex"] = Field(
        default="local",
        description="Where runs read texts: local (the features table) or vertex (a BigQuery "
        "table synced into a Vertex AI FeatureView).",
    )
    vertex_project: str | None = Field(
        default=None, description="Google Cloud project of the Vertex AI feature store."
    )
    vertex_region: str = Field(default="us-central1", description="Region of the online store.")
    vertex_online_store: str = Field(default="batchinfer", description="Vertex AI online store.")
    vertex_feature_view: str = Field(default="records", description="FeatureView in that store.")
    vertex_bigquery_table: str | None = Field(
        default=None, description="project.dataset.table that the FeatureView syncs from."
    )
    # One override per Vertex AI service: the admin API is regional, an Optimized store serves
    # from its own domain, and an endpoint predicts from the regional API.
    vertex_admin_endpoint: str | None = Field(
        default=None, description="host:port of the Vertex AI admin API; unset: regional."
    )
    vertex_serving_endpoint: str | None = Field(
        default=None,
        description="host:port the online store serves from (a PSC address); unset: the "
        "store's own.",
    )
    vertex_prediction_endpoint: str | None = Field(
        default=None,
        description="host:port of the Vertex AI prediction API; unset: regional.",
    )
    vertex_sync_timeout_seconds: float = Field(
        default=1800.0, gt=0, description="How long an import waits for the FeatureView sync."
    )
    # Set (Terraform does): the code location gets the BigQuery export asset; unset (a laptop):
    # it has no such asset and needs no BigQuery.
    predictions_bigquery_table: str | None = Field(
        default=None,
        pattern=r"^[^.`\s]+\.[^.`\s]+\.[^.`\s]+$",
        description="project.dataset.table the predictions are exported to; unset: no export.",
    )
    predictions_bigquery_timeout_seconds: float = Field(
        default=600.0, gt=0, description="How long an export waits for each BigQuery job."
    )

    model_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The model server: http(s)://HOST[:PORT] (locally or Cloud Run) or "
        "vertex://projects/P/locations/L/endpoints/E.",
    )
    model_auth: Literal["none", "google-id-token"] = Field(
        default="none",
        description="google-id-token: a private Cloud Run model server that only its invokers "
        "may call.",
    )
    model_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Seconds one request to the model server may take."
    )
    model_chunk_size: int = Field(
        default=256,
        ge=1,
        le=DEFAULT_MAX_INSTANCES,
        description="Texts per request (client chunk); the server refuses more than its "
        "MODEL_MAX_INSTANCES.",
    )
    model_max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1024,
        description="Bytes per request body (the server's MODEL_MAX_BODY_BYTES, same default); "
        "a text too large alone is dead-lettered without sending it.",
    )
    model_retries: int = Field(
        default=3,
        ge=0,
        description="Step retries of a predictions run after a transient model error (server "
        "down, 5xx, 429, timeout); a 4xx is never retried.",
    )
    model_retry_delay_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Wait before the first step retry, in seconds; it doubles each retry "
        "(with jitter).",
    )
    labels: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_LABELS,
        description="Candidate labels, comma-separated.",
    )
    multi_label: bool = Field(
        default=False, description="Score each label on its own instead of one softmax."
    )
    hypothesis_template: str | None = Field(
        default=None,
        description="A template with one {}, e.g. `This example is {}.`; unset: the model server's "
        "default (the "
        "pipeline's for nli; the labels' descriptions, or their names in several templates, "
        "for embedding).",
    )
    label_descriptions_file: Path | None = Field(
        default=None,
        description='A JSON file {"label": ["description", ...]} sent as the '
        "label_descriptions request parameter; unset: the model server's descriptions of the "
        "default labels, or the label names.",
    )

    # docs/capacity.md derives the two closing bounds from the measured run start-up and model
    # speed; ledger/closing.py holds the rule.
    batch_size: int = Field(
        default=4096,
        ge=1,
        description="Requests per ledger batch (partition) at most; tuned in docs/capacity.md.",
    )
    batch_max_wait_seconds: float = Field(
        default=15.0,
        ge=0,
        description="A smaller batch closes when its oldest request has waited this long.",
    )
    max_pull: int = Field(
        default=5000,
        ge=1,
        description="Messages one sensor tick pulls at most, and one more after a full pull "
        "to tell a backlog from a drained queue.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs of one batch before its requests are dead-lettered."
    )
    feature_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long a request waits for its record to reach the feature store.",
    )
    # Under the Dagster daemon's 5 s sensor loop (dagster/_daemon/sensor.py,
    # MIN_INTERVAL_LOOP_TIME; minimum_interval_seconds cannot go below it): a tick that ends
    # before the next loop is followed by the next tick at once, so the queue is watched ~80% of
    # the time instead of half (a 5 s poll made the loop skip every other turn).
    pull_timeout_seconds: float = Field(
        default=4.0,
        gt=0,
        description="How long a tick long-polls the queue when it is empty, so a publish is "
        "pulled at once.",
    )

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
        if url.startswith(VERTEX_SCHEME):
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
                f"{variable_of('ack_deadline_seconds')}={self.ack_deadline_seconds}: "
                f"Pub/Sub accepts {low}..{high} seconds"
            )
        low, high = PUBSUB_DELIVERY_ATTEMPTS
        if not low <= self.max_delivery_attempts <= high:
            raise ValueError(
                f"{variable_of('max_delivery_attempts')}={self.max_delivery_attempts}: Pub/Sub "
                f"accepts {low}..{high} delivery attempts"
            )
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy whose derived values (every ``cached_property``) follow the copy's fields.

        Pydantic copies the instance ``__dict__``, where ``cached_property`` keeps what it
        computed, so a copy with another ``label_descriptions_file`` or ``database_url`` would
        answer the original's descriptions or URL. The copy forgets them and computes its own,
        and reads a changed descriptions file at once, as loading settings does.
        """
        copied = super().model_copy(update=update, deep=deep)
        for name in _cached_names(type(self)):
            copied.__dict__.pop(name, None)
        return copied._label_descriptions_readable()

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
                f"{variable_of('label_descriptions_file')}={path}: {error}; it must be a JSON "
                'object {"label": ["description", ...]}'
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


def variable_of(name: str) -> str:
    """The environment variable of ``Settings`` field ``name`` (its alias, or the prefixed name).

    ``KeyError`` for a name that is not a field: a resource pointing at a setting that does not
    exist fails when its module is imported.
    """
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{ENV_PREFIX}{name.upper()}"


def described(name: str) -> str:
    """A resource field's description: the setting's own, naming its variable.

    Resource fields carry no default or bound of their own (``Settings`` checked the value
    before ``deployments`` built the resource), but the Dagster UI should still explain them.
    """
    return f"{Settings.model_fields[name].description} ({variable_of(name)})"


def shown_default(name: str) -> str:
    """A field's default as the configuration tables show it (Markdown)."""
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return "computed (see meaning)"
    default = field.default
    if default is None:
        return "unset"
    if isinstance(default, tuple):
        default = ",".join(default)
    if isinstance(default, bool):
        default = str(default).lower()
    return f"`{default}`"


def shown_bounds(name: str) -> str:
    """A field's choices or numeric bounds as the configuration tables show them (Markdown)."""
    field = Settings.model_fields[name]
    if get_origin(field.annotation) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(field.annotation))
    bounds = []
    for item in field.metadata:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
    return ", ".join(bounds)


def markdown_table() -> str:
    """The configuration table of docs/architecture.md and the README, one row per setting.

    Shape: ``| variable | default | allowed | meaning |``, one row per field in field order,
    rendered from the fields' defaults, bounds and descriptions. ``tests/test_settings_docs.py``
    keeps both documents equal to it; ``python -m batchinfer_dagster.settings`` prints it.
    """
    lines = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join(str(field.description).split()).replace("|", "\\|")
        lines.append(
            f"| `{variable_of(name)}` | {shown_default(name)} | {shown_bounds(name)} | {meaning} |"
        )
    return "\n".join(lines) + "\n"


TABLE_START = (
    "<!-- settings table: rendered from batchinfer_dagster/settings.py by "
    "`python -m batchinfer_dagster.settings --write FILE`; edit the fields, not this table -->"
)
TABLE_END = "<!-- end of settings table -->"


def with_table(document: str) -> str:
    """``document`` with the text between its table markers replaced by ``markdown_table()``.

    ``ValueError`` when the markers are missing, so a document cannot silently stop carrying it.
    """
    start, end = document.find(TABLE_START), document.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"no {TABLE_START!r} ... {TABLE_END!r} block in the document")
    head = document[: start + len(TABLE_START)]
    return f"{head}\n{markdown_table()}{document[end:]}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides winning (tests, CLI options)."""
    return Settings(**overrides)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        for name in sys.argv[2:]:
            document = Path(name)
            document.write_text(with_table(document.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(markdown_table(), end="")
