"""Every BigQuery statement we send, checked against BigQuery's grammar by sqlglot.

The fake of BigQuery's API matches our statements by pattern, so a statement BigQuery would
refuse could still pass the other tests. sqlglot's parser alone accepts some cut-off or
mangled statements (it stops where the grammar lets it), so each statement is parsed and
rendered again, and the rendering must be the statement itself: a word sqlglot skipped or read
differently shows up as a difference. Rules sqlglot does not check are checked on the parse:
BigQuery requires a WHERE, GROUP BY or HAVING beside a QUALIFY ("Query syntax", QUALIFY clause).
"""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from batchinfer_dagster.clients import bigquery_predictions, vertex_feature_store

TABLE = "project.dataset.table"
STAGING = "project.dataset_staging.table_0123456789abcdef"
STATEMENTS = {
    "prediction export MERGE": bigquery_predictions.merge_statement(TABLE, STAGING),
    "feature import MERGE": vertex_feature_store.merge_statement(TABLE, STAGING),
    "feature store listing": vertex_feature_store.listing_query(TABLE),
    "feature store count": vertex_feature_store.count_query(TABLE),
    "feature import DELETE": vertex_feature_store.deletion_statement(TABLE),
}


def parsed(statement: str) -> exp.Expression:
    return sqlglot.parse_one(statement, read="bigquery", error_level=ErrorLevel.RAISE)


def rendered(statement: str) -> str:
    return parsed(statement).sql(dialect="bigquery")


@pytest.mark.parametrize("statement", STATEMENTS.values(), ids=STATEMENTS.keys())
def test_each_statement_parses_and_renders_as_itself(statement: str) -> None:
    assert rendered(statement) == statement


@pytest.mark.parametrize("statement", STATEMENTS.values(), ids=STATEMENTS.keys())
def test_every_qualify_has_a_where_group_by_or_having(statement: str) -> None:
    for select in parsed(statement).find_all(exp.Select):
        if select.args.get("qualify"):
            assert any(select.args.get(part) for part in ("where", "group", "having")), select


def test_the_round_trip_catches_what_the_parser_alone_lets_through() -> None:
    """Cut-off and mangled statements that parse without an error yet render otherwise."""
    merge = STATEMENTS["prediction export MERGE"]
    listing = STATEMENTS["feature store listing"]
    mangled = [
        merge[: merge.index("UPDATE SET") + len("UPDATE SET")],
        merge[: merge.index("labels = source.labels,") + len("labels = source.labels,")],
        listing[: listing.index(" OVER") + len(" OVER")],
    ]
    for statement in mangled:
        parsed(statement)  # no error
        assert rendered(statement) != statement


def test_a_qualify_without_where_is_found() -> None:
    listing = STATEMENTS["feature store listing"].replace(" WHERE TRUE", "")
    with pytest.raises(AssertionError):
        test_every_qualify_has_a_where_group_by_or_having(listing)
