"""The schema revisions ``db`` reads without Alembic are the ones Alembic reads."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from batchinfer_dagster import db


def test_head_and_chain_are_alembics() -> None:
    scripts = ScriptDirectory.from_config(db._alembic_config())
    assert db.head_revision() == scripts.get_current_head()
    assert db.migration_revisions() == {
        script.revision: script.down_revision for script in scripts.walk_revisions()
    }
