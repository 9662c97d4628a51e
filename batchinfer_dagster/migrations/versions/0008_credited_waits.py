"""credited waits: the feature wait and reconcile's stale bound counted in observed time

Two ledger deadlines compared a time one process wrote with the clock of a later tick: a host
clock stepped forward (NTP correcting a clock that ran slow, a VM resumed) ended a feature wait
early, dead-lettering a request whose record may still arrive, and made a batch whose run
request was not yet turned into a run look lost, starting a second run. Now each deadline sums
the gaps it observed, each gap credited at most a bound, so one step moves it at most that far:

- ``prediction_requests.feature_waited_seconds``: seconds of the feature wait credited so far
  (NULL until the request's record is first found missing);
- ``prediction_batches.unrun_seconds``: seconds a queued or running batch was seen without a run
  in Dagster since its last run request (NULL after each one).

Both columns are nullable and added empty: no existing row changes meaning.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prediction_requests") as table:
        table.add_column(sa.Column("feature_waited_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("prediction_batches") as table:
        table.add_column(sa.Column("unrun_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prediction_batches") as table:
        table.drop_column("unrun_seconds")
    with op.batch_alter_table("prediction_requests") as table:
        table.drop_column("feature_waited_seconds")
