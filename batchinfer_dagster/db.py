"""The app database: its tables, the engine, the schema version, and portable upserts.

One schema serves SQLite (embedded default) and PostgreSQL (production). Migrations are Alembic's
(``batchinfer_dagster/migrations``) and run as an explicit step: ``batchinfer db upgrade``, which
``make run``, ``make demo``, the CLI's first use of the embedded SQLite database and the deploy
run call. Sensor ticks and runs only check that the schema is the one this code expects and
fail with a clear message otherwise. The migrating commands themselves may still start together
(four ``add-data-point`` on a fresh home), so ``upgrade`` holds a lock across the migration: a
file lock beside a SQLite file, a transaction-scoped advisory lock on PostgreSQL. The process
that waited finds the schema at head and migrates nothing.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy import text as sa_text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from batchinfer_dagster.chunks import chunked

# SQLite only autoincrements INTEGER PRIMARY KEY; BIGINT stays BIGINT on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()
# Values per IN (...) list and rows per statement: far under SQLite's (32766) and PostgreSQL's
# (65535) bound-parameter limits, whatever the number of columns.
IN_CHUNK = 1000


def utcnow() -> datetime:
    """Timezone-aware now; every stored time is UTC."""
    return datetime.now(UTC)


def storable_text(data: bytes | str) -> str:
    """Text that both databases can store: invalid UTF-8 and NUL characters escaped.

    PostgreSQL ``text`` cannot hold NUL (0x00), and a payload is arbitrary bytes; escaping here
    keeps one hostile payload from failing the transaction that stores a whole pull.
    """
    text = data.decode("utf-8", errors="backslashreplace") if isinstance(data, bytes) else data
    # Lone surrogates (a str from a non-UTF-8 source) cannot be encoded for the database either.
    text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes on both databases (SQLite keeps no zone, so it is put back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _ts(name: str, **kwargs: Any) -> Column:
    return Column(name, UtcDateTime(), **kwargs)


data_points = Table(
    "data_points",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("text", Text, nullable=False),
    _ts("created_at", nullable=False, default=utcnow),
    # When the record was added or last changed (the feature store's feature timestamp).
    _ts("updated_at", nullable=False, default=utcnow, onupdate=utcnow),
    # The record's change number, in commit order: set by the database itself (triggers of
    # migration 0004) on every insert and every change of ``text``, from ``record_changes``. The
    # feature import reads by it (``feature_import.py``). Never written by the code.
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_data_points_change_seq_id", "change_seq", "id"),
    # Never reuse an id on SQLite (a deleted newest row would give its id away again).
    sqlite_autoincrement=True,
)

# One row (id 1): the newest change number handed out to a record write. Each writing
# transaction increments it and holds the row (PostgreSQL: its row lock; SQLite: the database's
# single write lock) until it commits, so change numbers are committed in the order they are
# handed out: the committed value is a horizon below which every change is visible.
record_changes = Table(
    "record_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", BigInteger, nullable=False),
)

# A tombstone per deleted record (a trigger of migration 0004 writes it on every delete), so the
# feature import removes the record from the feature stores. Ids are never reused.
record_deletions = Table(
    "record_deletions",
    metadata,
    Column("record_id", BigInteger, primary_key=True, autoincrement=False),
    Column("change_seq", BigInteger, nullable=False),
    Index("ix_record_deletions_change_seq", "change_seq"),
)

# One row per feature store target: the change number its last successful import reached.
feature_imports = Table(
    "feature_imports",
    metadata,
    Column("target", String(300), primary_key=True),
    Column("imported_through", BigInteger, nullable=False),
    _ts("imported_at", nullable=False),
    Column("rows_imported", BigInteger, nullable=False),
    Column("full_import", Boolean, nullable=False),
)

features = Table(
    "features",
    metadata,
    Column("record_id", BigInteger, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
    _ts("feature_timestamp", nullable=False),
)

prediction_requests = Table(
    "prediction_requests",
    metadata,
    Column("message_id", String(128), primary_key=True),
    Column("record_id", BigInteger, nullable=False),
    Column("batch_key", String(64), nullable=True),
    Column("status", String(32), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    _ts("received_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("not_before", nullable=True),
    Column("error", Text, nullable=True),
    # Seconds of the feature wait credited so far (``ledger.feature_wait``); NULL until the
    # record is first found missing.
    Column("feature_waited_seconds", Float, nullable=True),
    Index("ix_prediction_requests_batch_key", "batch_key"),
    Index("ix_prediction_requests_status", "status"),
    Index("ix_prediction_requests_record_id", "record_id"),
)

prediction_batches = Table(
    "prediction_batches",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    Column("status", String(32), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("run_id", String(64), nullable=True),
    # Seconds reconcile saw the batch without a run since its last run request (NULL after one).
    Column("unrun_seconds", Float, nullable=True),
    # What the batch's last settled run measured (migration 0010): the records it predicted and
    # the seconds its model call took; NULL for batches settled before, or with no model call.
    Column("predicted", Integer, nullable=True),
    Column("model_seconds", Float, nullable=True),
    # Of ``attempts``, those whose run a stop of ``make run`` interrupted: not charged against
    # the attempt limit (``ledger.reconcile``).
    Column("uncharged_attempts", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_prediction_batches_status", "status"),
)

# One row per prediction configuration ever used (``receipts.Configuration``), keyed by its
# digest. Rows of predictions stored before receipts (migration 0005) have ``known`` false: only
# their model id is known, the other fields are NULL.
prediction_configurations = Table(
    "prediction_configurations",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("model_digest", String(128), nullable=False),
    Column("known", Boolean, nullable=False),
    Column("parameters_digest", String(64), nullable=True),
    Column("candidate_labels", JSON, nullable=True),
    Column("hypothesis_template", Text, nullable=True),
    # The descriptions that travelled with the requests ({label: [description, ...]}).
    Column("label_descriptions", JSON, nullable=True),
    Column("label_descriptions_digest", String(64), nullable=True),
    Column("multi_label", Boolean, nullable=True),
    _ts("created_at", nullable=False),
)

# One row per record and configuration, so a changed configuration adds rows beside the old
# ones. ``is_current`` marks the row a reader shows as "the prediction" of its record (at most
# one per record, a partial unique index); ``text_digest`` is NULL for rows older than receipts.
predictions = Table(
    "predictions",
    metadata,
    Column("record_id", BigInteger, primary_key=True, autoincrement=False),
    Column("configuration", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("sequence", Text, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("batch_key", String(64), nullable=True),
    Column("run_id", String(64), nullable=True),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    Column("text_digest", String(64), nullable=True),
    Column("is_current", Boolean, nullable=False),
    # The row's change number, in commit order: set by the database itself (triggers of
    # migration 0007) on every insert and update, from ``prediction_changes``. The BigQuery
    # export reads by it (``prediction_changes.py``). Never written by the code.
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_predictions_change_seq", "change_seq", "record_id", "configuration"),
    Index(
        "ux_predictions_current_record",
        "record_id",
        unique=True,
        sqlite_where=sa_text("is_current"),
        postgresql_where=sa_text("is_current"),
    ),
    Index("ix_predictions_configuration", "configuration"),
)

# One row (id 1): the newest change number handed out to a prediction write, held by the writing
# transaction until it commits (as ``record_changes`` is for records).
prediction_changes = Table(
    "prediction_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", BigInteger, nullable=False),
)

# A tombstone per deleted prediction row (a trigger of migration 0007 writes it on every
# delete: an erased record, a discarded rollout), so the export removes it from BigQuery. A row
# deleted again after it came back gets the newer number.
prediction_deletions = Table(
    "prediction_deletions",
    metadata,
    Column("record_id", BigInteger, primary_key=True, autoincrement=False),
    Column("configuration", String(64), primary_key=True),
    Column("change_seq", BigInteger, nullable=False),
    Index("ix_prediction_deletions_change_seq", "change_seq", "record_id", "configuration"),
)

# One row per rollout (``rollout``): a candidate configuration, keyed by its digest, whose
# predictions are made by ordinary ledger batches (``rollout_batches``) and stored beside the
# current ones until promoted. ``status``: running, promoted or discarded.
rollouts = Table(
    "rollouts",
    metadata,
    Column("candidate", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    # The model server the rollout's batches go to (its candidate's model); NULL: the
    # deployment's own (BATCHINFER_MODEL_URL).
    Column("model_url", String(2048), nullable=True),
)

# The ledger batches of a rollout, written in the transaction that writes the batches, so a run
# never sees a rollout's batch without knowing it predicts the candidate.
rollout_batches = Table(
    "rollout_batches",
    metadata,
    Column("batch_key", String(64), primary_key=True),
    Column("candidate", String(64), nullable=False),
    Index("ix_rollout_batches_candidate", "candidate"),
)

# The digest of each record's text as the feature store holds it, written by the feature import
# in the transaction (local store) or the chunk (BigQuery) that moves the text. A prediction is
# stale by text when its receipt's digest differs: comparing two stored digests, never the
# feature store itself.
record_text_digests = Table(
    "record_text_digests",
    metadata,
    Column("record_id", BigInteger, primary_key=True, autoincrement=False),
    Column("text_digest", String(64), nullable=False),
    _ts("imported_at", nullable=False),
)

# The stale predictions ``batchinfer predict --stale`` asked to replace: one row per record, the
# (configuration, text digest) of the prediction it replaces, so asking again publishes nothing
# new until that prediction is replaced (``staleness``).
stale_requests = Table(
    "stale_requests",
    metadata,
    Column("record_id", BigInteger, primary_key=True, autoincrement=False),
    Column("configuration", String(64), nullable=False),
    Column("text_digest", String(64), nullable=True),
    _ts("requested_at", nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("message_id", String(128), nullable=True),
    Column("payload", Text, nullable=False),
    Column("reason", Text, nullable=False),
    _ts("received_at", nullable=False),
    # The record the message asked for, when it names one: resolution and replay go by it.
    Column("record_id", BigInteger, nullable=True),
    # Deliveries before the message was given up (queue and Pub/Sub dead letters).
    Column("delivery_attempts", Integer, nullable=True),
    # Set in the transaction that writes the record's prediction: the dead letter is settled.
    _ts("resolved_at", nullable=True),
    Column("resolved_by_run", String(64), nullable=True),
    # Set once by `batchinfer dead-letters replay`, so a dead letter is re-published only once.
    _ts("replayed_at", nullable=True),
    Column("replay_message_id", String(128), nullable=True),
    # The candidate digest when the request was a rollout's: counted in its report, replayed
    # into it, resolved only by a candidate prediction (NULL: an ordinary request's).
    Column("rollout", String(64), nullable=True),
    Index("ix_dead_letters_message_id", "message_id"),
    Index("ix_dead_letters_rollout", "rollout"),
    Index("ix_dead_letters_record_id", "record_id"),
    # Never reuse an id on SQLite (a deleted newest row would give its id away again).
    sqlite_autoincrement=True,
)

queue_messages = Table(
    "queue_messages",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    _ts("published_at", nullable=False),
    _ts("visible_at", nullable=False),
    Column("delivery_attempt", Integer, nullable=False, default=0),
    Column("ack_id", String(64), nullable=True, unique=True),
    Index("ix_queue_messages_visible_at", "visible_at"),
    # Never reuse an id on SQLite (a deleted newest row would give its id away again).
    sqlite_autoincrement=True,
)


class DatabaseUnavailableError(RuntimeError):
    """The app database cannot be reached; the message names the URL without its password."""


class SchemaOutOfDateError(RuntimeError):
    """The app database's schema is not the one this code expects; the message says what to run."""


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
MIGRATIONS = Path(__file__).parent / "migrations"


def _configure_sqlite(engine: Engine) -> None:
    """WAL and a busy timeout let the sensor, runs and the CLI share one SQLite file."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_app_engine(url: str) -> Engine:
    """A new engine for ``url`` (no schema check); SQLite files get their folder created."""
    if is_sqlite(url):
        database = sqlite_file(url)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def engine_for(url: str) -> Engine:
    """The process-wide engine for ``url``, its schema checked once (``SchemaOutOfDateError``)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_app_engine(url)
            check_schema(engine)
            _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Forget cached engines (tests that restart or swap databases)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migration_revisions() -> dict[str, str | None]:
    """``{revision: down_revision}`` of every migration under ``migrations/versions``.

    Read from each file's module-level ``revision`` and ``down_revision`` literals, as Alembic
    reads them, without importing Alembic's script machinery (about 0.1 s a command on a quiet
    machine); ``tests/fast/test_schema_revisions.py`` holds the result equal to Alembic's.
    """
    revisions: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        assigned = {
            target.id: node.value
            for node in ast.parse(path.read_text(encoding="utf-8")).body
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision")
        }
        if "revision" in assigned:
            revisions[ast.literal_eval(assigned["revision"])] = ast.literal_eval(
                assigned.get("down_revision", ast.Constant(None))
            )
    return revisions


def head_revision() -> str:
    """The newest schema revision this code knows: the one no other migration follows.

    Raises ``RuntimeError`` when there is none (an incomplete package) or several (two
    migrations made from the same parent: give one of them the other as its down revision).
    """
    revisions = migration_revisions()
    heads = sorted(set(revisions) - set(revisions.values()))
    if len(heads) != 1:
        raise RuntimeError(
            f"migrations under {MIGRATIONS} have heads {heads}, not one: "
            + ("the package is incomplete" if not heads else "chain them one after the other")
        )
    return heads[0]


def _unavailable(engine: Engine, exc: Exception) -> DatabaseUnavailableError:
    where = engine.url.render_as_string(hide_password=True)
    reason = " ".join(str(getattr(exc, "orig", exc)).split())
    return DatabaseUnavailableError(
        f"cannot reach the app database {where}: {reason}. "
        "Check BATCHINFER_DATABASE_URL and that the server is running."
    )


# Where Alembic keeps the revision a database is at: one row, one column.
ALEMBIC_VERSION_TABLE = "alembic_version"


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for a database never migrated.

    Read from Alembic's version table with plain SQL rather than through Alembic's
    ``MigrationContext``, whose import costs every command about 0.1 s on a quiet machine (the
    CLI checks the revision on each start). Our migrations are linear, so the table holds at
    most one row; more than one is a database branched by someone else, and raises.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(ALEMBIC_VERSION_TABLE):
                return None
            revisions = (
                connection.execute(sa_text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}"))
                .scalars()
                .all()
            )
    except OperationalError as exc:
        raise _unavailable(engine, exc) from exc
    if len(revisions) > 1:
        where = engine.url.render_as_string(hide_password=True)
        raise SchemaOutOfDateError(
            f"the app database {where} is at several schema revisions {sorted(revisions)}: "
            "this code's migrations are one line; restore the database or migrate it by hand"
        )
    return revisions[0] if revisions else None


def check_schema(engine: Engine) -> None:
    """Fail unless the database is at this code's newest schema revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        raise SchemaOutOfDateError(
            f"the app database {where} is at schema revision {current or 'none (empty)'}, "
            f"this code needs {head}: run `batchinfer db upgrade` with the same "
            "BATCHINFER_DATABASE_URL (`make run`, `make demo` and the deploy run do it)"
        )


# The PostgreSQL advisory lock key that serializes migrations of one database (any constant
# bigint: it only has to differ from other advisory locks taken on the same database).
MIGRATION_LOCK_KEY = 0x62617463_68696E66  # "batchinf"
# How long a migration waits for another one on the same SQLite file before giving up.
MIGRATION_LOCK_TIMEOUT_SECONDS = 300


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another dialect."""
    if not is_sqlite(url):
        return None
    path = url.split(":///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def file_lock(path: Path, *, timeout: float = MIGRATION_LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created beside the thing it guards) across processes.

    ``filelock`` takes an OS lock (``fcntl.flock``, ``LockFileEx`` on Windows), which the OS
    releases when its process dies, so a killed migration never leaves the home locked.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path, timeout=timeout):
        yield


def migration_lock(engine: Engine) -> Any:
    """The lock around a SQLite file's migration: ``<file>.migrate.lock`` (nothing in memory)."""
    database = sqlite_file(engine.url.render_as_string(hide_password=False))
    if database is None:
        return nullcontext()
    return file_lock(database.with_name(database.name + ".migrate.lock"))


def upgrade(engine: Engine) -> None:
    """Run Alembic migrations up to head on ``engine`` (the explicit migration step).

    Safe to call from several processes at once: they migrate one after the other, under
    ``migration_lock`` (SQLite) or ``pg_advisory_xact_lock`` taken first in the migration's own
    transaction (PostgreSQL, released at its commit); Alembic reads the current revision after
    the lock, so a process that waited migrates nothing.
    """
    from alembic import command
    from sqlalchemy.exc import OperationalError

    config = _alembic_config()
    try:
        with migration_lock(engine), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise _unavailable(engine, exc) from exc


def hold_sqlite_write_lock(connection: Connection) -> None:
    """On SQLite, take the database's write lock now and hold it until the transaction ends.

    pysqlite opens a transaction only at the first INSERT, UPDATE or DELETE, so what a
    transaction reads before its first write is read outside it, and another writer may commit
    in between: a read-then-write check (a record not deleted, no request still open) would then
    hold for a database that is gone by the write. ``SELECT … FOR UPDATE`` renders nothing on
    SQLite. ``BEGIN IMMEDIATE`` takes the single write lock first, so every later read of the
    transaction sees what it writes against (another writer waits, up to the busy timeout). A
    transaction that has written already holds the lock, and PostgreSQL locks rows instead
    (the callers' ``FOR UPDATE`` or ``UPDATE``): both are left as they are.

    Held by ``ledger.settle_batch`` (its deletion check), ``ledger.dead_letter_batch`` (its
    queued requests) and ``ledger.prune_settled`` (the batches still settled); the rollout's
    row is locked by a write anyway (``ledger.rollout_lock.locked_rollout_status``).
    """
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def existing_values(connection: Connection, column: Column, values: Sequence[Any]) -> set[Any]:
    """Those of ``values`` that ``column`` holds, in IN lists of ``IN_CHUNK``."""
    found: set[Any] = set()
    for chunk in chunked(values, IN_CHUNK):
        found.update(connection.execute(select(column).where(column.in_(chunk))).scalars())
    return found


def insert_ignoring_conflicts(
    connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike."""
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(table).on_conflict_do_nothing(), list(rows))


def upsert(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    key: Iterable[str],
    update: Iterable[str],
) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE on SQLite and PostgreSQL alike."""
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={column: statement.excluded[column] for column in update},
    )
    connection.execute(statement, list(rows))
