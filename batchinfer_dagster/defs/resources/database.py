"""The app database (records, feature table, ledger, predictions): SQLite or Cloud SQL."""

from __future__ import annotations

from abc import ABC, abstractmethod

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.settings import described


class DatabaseResource(ConfigurableResource, ABC):
    """The app database; ``get_engine`` fails with ``SchemaOutOfDateError`` until migrated."""

    @abstractmethod
    def url(self) -> str:
        """The SQLAlchemy URL (may hold a password: never log it unmasked)."""

    def get_engine(self) -> Engine:
        """The process-wide engine, after one check of the schema revision."""
        return db.engine_for(self.url())

    def upgrade(self) -> None:
        """Migrate to the newest schema (the explicit step; sensors and runs never do it)."""
        db.upgrade(db.create_app_engine(self.url()))


class SqliteDatabase(DatabaseResource):
    """The embedded default: one SQLite file shared by the CLI, the sensor and the runs."""

    path: str = Field(description="SQLite file, by default $BATCHINFER_HOME/batchinfer.db.")

    def url(self) -> str:
        return f"sqlite:///{self.path}"


class PostgresDatabase(DatabaseResource):
    """PostgreSQL (Cloud SQL in production); the URL holds the password, so it is an EnvVar."""

    database_url: str = Field(description=described("database_url"))

    def url(self) -> str:
        return self.database_url
