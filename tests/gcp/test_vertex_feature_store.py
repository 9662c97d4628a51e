"""The Vertex feature store with the real Google clients against the local fakes."""

from __future__ import annotations

import json
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.api_core import retry as api_retry
from google.cloud import bigquery
from sqlalchemy import Engine

from batchinfer_dagster import db, feature_import
from batchinfer_dagster.clients.google_grpc import grpc_client_kwargs
from batchinfer_dagster.clients.vertex_feature_store import (
    FeatureOnlineStoreAdminServiceClient,
    VertexFeatureStore,
    VertexFeatureStoreError,
    VertexFeatureView,
    serving_endpoint,
)
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.resources.vertex_feature_store import VertexFeatureStoreResource
from batchinfer_dagster.records import add_records as add_texts
from batchinfer_dagster.records import delete_record, edit_record
from batchinfer_dagster.settings import Settings
from batchinfer_testing.fakes.google import FakeBigQuery, FakeVertex
from batchinfer_testing.gcp_names import PROJECT, TABLE

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
STAGING_DATASET = f"{PROJECT}.batchinfer_staging"
FAST_RETRY = api_retry.Retry(initial=0.01, maximum=0.02, timeout=0.5)


def add_records(engine: Engine, *texts: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.insert(db.data_points), [{"text": text, "created_at": db.utcnow()} for text in texts]
        )


def feature_view_of(settings: Settings) -> VertexFeatureView:
    resource = resources_for(settings).feature_store
    assert isinstance(resource, VertexFeatureStoreResource)
    return resource.view()


def make_store(
    settings: Settings, engine: Engine, client: bigquery.Client, **overrides: object
) -> VertexFeatureStore:
    return VertexFeatureStore(
        feature_view_of(settings),
        engine,
        bigquery_client=client,
        poll_seconds=0.01,
        fetch_retry=FAST_RETRY,
        **overrides,
    )


def test_import_loads_bigquery_syncs_and_fetches(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    add_records(engine, "my phone app crashes", "I was billed twice", 'ünïcode "quoted"\nline')
    store = make_store(vertex_settings, engine, bigquery_client)

    result = store.import_records()

    assert result.rows_imported == 3
    assert result.details["feature_view_sync"].startswith(f"{store.view_name}/featureViewSyncs/")
    assert result.details["rows_synced"] == 3
    rows = fake_bigquery.rows(TABLE)
    assert [(r["entity_id"], r["text"]) for r in rows] == [
        ("1", "my phone app crashes"),
        ("2", "I was billed twice"),
        ("3", 'ünïcode "quoted"\nline'),
    ]
    assert all(r["feature_timestamp"].endswith("+00:00") for r in rows)
    assert store.fetch([3, 1, 99, 1]) == {1: "my phone app crashes", 3: 'ünïcode "quoted"\nline'}
    assert sorted(fake_vertex.fetch_keys) == ["1", "3", "99"]
    store.close()


def terraform_table_schema() -> list[dict[str, str]]:
    """The source table's schema as terraform/bigquery.tf creates it (with descriptions)."""
    text = (Path(__file__).resolve().parents[2] / "terraform" / "bigquery.tf").read_text()
    body = re.search(r"schema = jsonencode\((\[.*?\])\)", text, re.DOTALL)
    assert body, "no schema = jsonencode([...]) in terraform/bigquery.tf"
    return json.loads(re.sub(r"(\w+)\s*=", r'"\1":', body.group(1)).replace("},\n  ]", "}]"))


class WallClock:
    """The import's clock, moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def add_at(engine: Engine, when: datetime, *texts: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.insert(db.data_points),
            [{"text": text, "created_at": when, "updated_at": when} for text in texts],
        )


def test_second_import_merges_only_the_delta_and_the_table_keeps_one_row_per_record(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    clock = WallClock(T0 + timedelta(minutes=1))
    add_at(engine, T0, "a", "b")
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=clock)
    store.import_records()
    add_at(engine, T0 + timedelta(minutes=2), "c")
    with engine.begin() as connection:
        connection.execute(
            sa.update(db.data_points)
            .where(db.data_points.c.id == 1)
            .values(text="a, changed", updated_at=T0 + timedelta(minutes=2))
        )
    clock.now = T0 + timedelta(minutes=3)

    result = store.import_records()

    assert result.rows_imported == 2
    assert result.total_records == 3
    # Each import loads its own staging table (empty, new), merges it, and drops it.
    assert fake_bigquery.load_dispositions == ["WRITE_EMPTY", "WRITE_EMPTY"]
    staging = fake_bigquery.deleted
    assert len(set(staging)) == 2
    assert all(name.startswith(f"{STAGING_DATASET}.records_") for name in staging)
    assert not any(name.startswith(STAGING_DATASET) for name in fake_bigquery.tables)
    # One row per entity id, as Vertex AI requires of a table source: record 1 was updated.
    rows = fake_bigquery.rows(TABLE)
    assert [(r["entity_id"], r["text"]) for r in rows] == [
        ("1", "a, changed"),
        ("2", "b"),
        ("3", "c"),
    ]
    assert len(fake_vertex.syncs) == 2
    assert store.fetch([1, 2, 3]) == {1: "a, changed", 2: "b", 3: "c"}
    assert store.list_records(10) == ([(1, "a, changed"), (2, "b"), (3, "c")], 3)


def test_import_with_nothing_new_neither_loads_nor_syncs(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    clock = WallClock(T0 + timedelta(minutes=1))
    add_at(engine, T0, "a", "b")
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=clock)
    store.import_records()
    clock.now = T0 + timedelta(minutes=2)

    result = store.import_records()

    assert result.rows_imported == 0
    assert result.total_records == 2
    assert "feature_view_sync" not in result.details
    assert fake_bigquery.load_dispositions == ["WRITE_EMPTY"]
    assert len(fake_vertex.syncs) == 1


def test_full_import_replaces_the_tables_rows_with_a_snapshot(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    clock = WallClock(T0 + timedelta(minutes=1))
    add_at(engine, T0, "a", "b")
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=clock)
    store.import_records()
    with engine.begin() as connection:
        connection.execute(
            sa.update(db.data_points)
            .where(db.data_points.c.id == 2)
            .values(text="b2", updated_at=T0 + timedelta(minutes=2))
        )
    clock.now = T0 + timedelta(minutes=3)
    store.import_records()
    assert len(fake_bigquery.rows(TABLE)) == 2

    result = store.import_records(full=True)

    assert result.rows_imported == 2
    assert fake_bigquery.load_dispositions == ["WRITE_EMPTY", "WRITE_EMPTY", "WRITE_TRUNCATE_DATA"]
    assert [(r["entity_id"], r["text"]) for r in fake_bigquery.rows(TABLE)] == [
        ("1", "a"),
        ("2", "b2"),
    ]


def test_failed_sync_keeps_the_watermark_and_the_retry_merges_the_same_row_once(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    clock = WallClock(T0 + timedelta(minutes=1))
    add_at(engine, T0, "a")
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=clock)
    fake_vertex.sync_outcome = "fail"
    with pytest.raises(VertexFeatureStoreError, match="failed"):
        store.import_records()
    fake_vertex.sync_outcome = "ok"
    clock.now = T0 + timedelta(minutes=2)

    result = store.import_records()

    assert result.rows_imported == 1
    # Merged twice, stored once.
    assert [(r["entity_id"], r["text"]) for r in fake_bigquery.rows(TABLE)] == [("1", "a")]
    assert store.list_records(10) == ([(1, "a")], 1)
    assert store.fetch([1]) == {1: "a"}


def test_loads_keep_terraforms_schema(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    schema = terraform_table_schema()
    assert all(field["description"] for field in schema)
    fake_bigquery.create_table(TABLE, schema)
    clock = WallClock(T0 + timedelta(minutes=1))
    add_at(engine, T0, "a", "b")
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=clock)
    store.import_records()
    clock.now = T0 + timedelta(minutes=2)

    store.import_records(full=True)

    assert fake_bigquery.load_dispositions == ["WRITE_EMPTY", "WRITE_TRUNCATE_DATA"]
    # The table is Terraform's: a load that replaced its schema (WRITE_TRUNCATE) would drop the
    # descriptions and make the next `terraform plan` want to change the table back.
    assert fake_bigquery.schema(TABLE) == schema
    assert store.list_records(2) == ([(1, "a"), (2, "b")], 2)


def test_a_missing_feature_view_is_not_a_missing_record(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    """A wrong view answers NOT_FOUND for every key, like unsynced records: it must fail the
    fetch with the view's name instead of parking every request in waiting_features."""
    fake_vertex.feature_view_exists = False
    store = make_store(vertex_settings, engine, bigquery_client)

    with pytest.raises(VertexFeatureStoreError, match=r"FeatureView .*/featureViews/records"):
        store.fetch([1, 2])
    assert fake_vertex.fetch_keys == []  # no record was asked for

    fake_vertex.feature_view_exists = True
    fake_vertex.online = {"1": "a"}
    assert store.fetch([1, 2]) == {1: "a"}  # 2: a missing record, waits for its sync
    assert store.fetch([2, 1]) == {1: "a"}
    assert fake_vertex.feature_view_lookups == 2  # the failed check, then once for good
    store.close()


def test_each_vertex_service_has_its_own_endpoint(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    """The admin calls reach the admin endpoint while fetches go to the serving one."""
    settings = vertex_settings.model_copy(update={"vertex_serving_endpoint": "127.0.0.1:9"})
    store = make_store(settings, engine, bigquery_client)

    with pytest.raises(VertexFeatureStoreError, match="fetching record 1"):
        store.fetch([1])  # nothing listens on port 9
    assert fake_vertex.feature_view_lookups == 1  # the view check went to the admin endpoint
    assert fake_vertex.fetch_keys == []
    store.close()


def test_list_records_orders_ids_numerically(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    add_records(engine, *[f"text {i}" for i in range(1, 12)])
    store = make_store(vertex_settings, engine, bigquery_client)
    store.import_records()

    records, total = store.list_records(limit=10)

    assert total == 11
    assert [record_id for record_id, _ in records] == list(range(1, 11))
    assert records[9] == (10, "text 10")


def test_failed_sync_names_the_sync(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    add_records(engine, "a")
    fake_vertex.sync_outcome = "fail"
    store = make_store(vertex_settings, engine, bigquery_client)

    with pytest.raises(VertexFeatureStoreError, match=r"featureViewSyncs/\d+ failed \(code 9\)"):
        store.import_records()


def test_sync_that_never_finishes_times_out(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    add_records(engine, "a")
    fake_vertex.sync_outcome = "never"
    settings = vertex_settings.model_copy(update={"vertex_sync_timeout_seconds": 0.2})
    store = make_store(settings, engine, bigquery_client)

    with pytest.raises(
        VertexFeatureStoreError, match=r"featureViewSyncs/\d+ did not finish within"
    ):
        store.import_records()
    polls = list(fake_vertex.syncs.values())
    assert len(polls) == 1
    assert polls[0] > 2


def test_fetch_error_other_than_not_found_raises(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    fake_vertex.online.update({"1": "a", "2": "b"})
    fake_vertex.fetch_errors["2"] = grpc.StatusCode.PERMISSION_DENIED
    store = make_store(vertex_settings, engine, bigquery_client)

    with pytest.raises(
        VertexFeatureStoreError, match="record 2 .*PERMISSION_DENIED|record 2 .*403"
    ):
        store.fetch([1, 2])


def test_fetch_retries_unavailable_until_its_deadline(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    fake_vertex.fetch_errors["5"] = grpc.StatusCode.UNAVAILABLE
    store = make_store(vertex_settings, engine, bigquery_client)

    with pytest.raises(VertexFeatureStoreError, match="record 5"):
        store.fetch([5])
    assert fake_vertex.fetch_keys.count("5") > 1


def test_fetch_many_ids_concurrently(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_vertex: FakeVertex,
) -> None:
    fake_vertex.online.update({str(i): f"t{i}" for i in range(0, 400, 2)})
    store = make_store(vertex_settings, engine, bigquery_client, max_fetch_concurrency=8)

    found = store.fetch(list(range(400)))

    assert found == {i: f"t{i}" for i in range(0, 400, 2)}
    assert len(fake_vertex.fetch_keys) == 400


def test_missing_settings_are_named(tmp_path, engine: Engine) -> None:
    settings = Settings(home=tmp_path, feature_store="vertex", vertex_project="p")
    with pytest.raises(VertexFeatureStoreError, match="BATCHINFER_VERTEX_BIGQUERY_TABLE"):
        VertexFeatureStore(feature_view_of(settings), engine)


def test_optimized_store_is_served_from_its_public_endpoint(
    vertex_settings: Settings, fake_vertex: FakeVertex
) -> None:
    from google.cloud.aiplatform_v1.services.feature_online_store_admin_service.transports import (
        FeatureOnlineStoreAdminServiceGrpcTransport,
    )

    admin = FeatureOnlineStoreAdminServiceClient(
        **grpc_client_kwargs(
            FeatureOnlineStoreAdminServiceGrpcTransport, vertex_settings.vertex_admin_endpoint
        )
    )
    name = "projects/p/locations/europe-west4/featureOnlineStores/s"

    with pytest.raises(VertexFeatureStoreError, match="no public endpoint yet"):
        serving_endpoint(admin, name)
    fake_vertex.public_endpoint = "1234.europe-west4-5678.featurestore.vertexai.goog"
    assert serving_endpoint(admin, name) == fake_vertex.public_endpoint


def test_an_older_import_merged_after_a_newer_one_changes_nothing(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    """Two imports at once: the slow one opened its window (reading the database's time) and
    read its rows before a record was edited; the fast one did both after, and merges first.
    The slow one's rows are stamped earlier, so its older text never replaces the newer row."""
    fake_bigquery.create_table(TABLE, terraform_table_schema())
    add_at(engine, T0, "older", "b")
    slow = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
    slow_window = feature_import.open_window(engine, slow.target)
    with tempfile.TemporaryFile() as spool:
        assert slow._write_rows(spool, slow_window) == 2  # noqa: SLF001 - interleaved steps
        with engine.begin() as connection:
            connection.execute(
                sa.update(db.data_points).where(db.data_points.c.id == 1).values(text="newer")
            )
        fast = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
        assert fast.import_records().rows_imported == 2

        slow._load(spool, full=False)  # noqa: SLF001 - the slow import merges last

    assert sorted((r["entity_id"], r["text"]) for r in fake_bigquery.rows(TABLE)) == [
        ("1", "newer"),
        ("2", "b"),
    ]
    merges = [query for query in fake_bigquery.queries if query.startswith("MERGE")]
    assert len(merges) == 2
    assert all("source.feature_timestamp >= target.feature_timestamp" in q for q in merges)


def test_an_edit_by_a_writer_whose_clock_stepped_back_is_served(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    """The first version is stamped an hour ahead by a fast clock, the edit an hour earlier
    after the clock stepped back: the edit still replaces it on BigQuery and online, because
    the rows carry each import's database time, not the writer's ``updated_at``."""
    add_at(engine, T0 + timedelta(hours=1), "first version")
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
    store.import_records()
    [first] = fake_bigquery.rows(TABLE)
    with engine.begin() as connection:
        connection.execute(
            sa.update(db.data_points).values(text="the edit", updated_at=T0 - timedelta(hours=1))
        )

    store.import_records()

    [row] = fake_bigquery.rows(TABLE)
    assert row["text"] == "the edit"
    assert datetime.fromisoformat(row["feature_timestamp"]) > datetime.fromisoformat(
        first["feature_timestamp"]
    )
    assert store.fetch([1]) == {1: "the edit"}


def test_a_deleted_record_leaves_the_source_table_and_the_online_store(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    ids = add_texts(engine, ["keep", "erase", "change then erase"])
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
    store.import_records()
    delete_record(engine, ids[1])
    edit_record(engine, ids[2], "changed")
    delete_record(engine, ids[2])

    result = store.import_records()

    # Nothing changed that still exists, yet the deletions are applied and synced.
    assert (result.rows_imported, result.details["rows_deleted"]) == (0, 2)
    assert len(fake_vertex.syncs) == 2
    [delete] = [query for query in fake_bigquery.queries if query.startswith("DELETE")]
    assert delete == f"DELETE FROM `{TABLE}` WHERE entity_id IN UNNEST(@ids)"
    assert [(r["entity_id"], r["text"]) for r in fake_bigquery.rows(TABLE)] == [("1", "keep")]
    assert store.fetch(ids) == {ids[0]: "keep"}
    assert store.list_records(10) == ([(ids[0], "keep")], 1)
    assert result.total_records == 1
    again = store.import_records()  # the tombstones are behind the watermark now
    assert (again.rows_imported, again.details["rows_deleted"]) == (0, 0)
    assert len(fake_vertex.syncs) == 2
    store.close()


def test_full_import_rebuilds_exactly_the_current_records_on_vertex(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    """A row with no record (written by hand, or left before deletions reached Vertex) and a
    deleted record: after ``--full`` BigQuery and the online store hold the current records."""
    ids = add_texts(engine, ["a", "b", "c"])
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
    store.import_records()
    stray = {"entity_id": "999", "text": "no such record", "feature_timestamp": T0.isoformat()}
    fake_bigquery.tables[TABLE].append(stray)
    delete_record(engine, ids[0])
    edit_record(engine, ids[1], "b, edited")

    result = store.import_records(full=True)

    current = {ids[1]: "b, edited", ids[2]: "c"}
    assert (result.rows_imported, result.details["rows_deleted"]) == (2, 0)
    assert {int(r["entity_id"]): r["text"] for r in fake_bigquery.rows(TABLE)} == current
    assert fake_vertex.online == {str(i): text for i, text in current.items()}
    assert store.fetch([*ids, 999]) == current
    assert not [query for query in fake_bigquery.queries if query.startswith("DELETE")]


def test_a_refused_row_delete_fails_the_import_and_the_next_deletes_again(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    ids = add_texts(engine, ["keep", "erase"])
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
    store.import_records()
    watermark = feature_import.stored_watermark(engine, store.target)
    delete_record(engine, ids[1])
    fake_bigquery.refuse_row_deletes = True

    with pytest.raises(VertexFeatureStoreError, match=r"deleting 1 deleted records \(ids 2…2\)"):
        store.import_records()

    assert feature_import.stored_watermark(engine, store.target) == watermark
    assert len(fake_vertex.syncs) == 1
    assert store.fetch([ids[1]]) == {ids[1]: "erase"}  # still served until an import succeeds
    fake_bigquery.refuse_row_deletes = False
    assert store.import_records().details["rows_deleted"] == 1
    assert store.fetch(ids) == {ids[0]: "keep"}


def test_deletions_go_in_statements_of_one_page_of_ids(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Page size 2, three deletions: two DELETE statements (2 + 1 ids), all three rows gone."""
    ids = add_texts(engine, ["a", "b", "c", "d"])
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0))
    store.import_records()
    for record_id in ids[:3]:
        delete_record(engine, record_id)
    pages = feature_import.iter_deleted
    monkeypatch.setattr(
        feature_import, "iter_deleted", lambda engine, window: pages(engine, window, chunk=2)
    )

    result = store.import_records()

    assert result.details["rows_deleted"] == 3
    assert len([query for query in fake_bigquery.queries if query.startswith("DELETE")]) == 2
    assert [r["entity_id"] for r in fake_bigquery.rows(TABLE)] == [str(ids[3])]


def test_a_failed_merge_keeps_the_watermark_and_drops_its_staging_table(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    assert fake_bigquery.delete(PROJECT, "batchinfer", "records")
    add_at(engine, T0, "a")
    store = make_store(
        vertex_settings, engine, bigquery_client, wall_clock=WallClock(T0 + timedelta(minutes=1))
    )
    with pytest.raises(VertexFeatureStoreError, match=f"into BigQuery table {TABLE} failed"):
        store.import_records()  # the source table does not exist: BigQuery answers 404
    assert not fake_vertex.syncs
    assert len([name for name in fake_bigquery.deleted if name.startswith(STAGING_DATASET)]) == 1
    assert not any(name.startswith(STAGING_DATASET) for name in fake_bigquery.tables)

    fake_bigquery.create_table(TABLE, terraform_table_schema())
    assert store.import_records().rows_imported == 1  # the same window again
    assert [(r["entity_id"], r["text"]) for r in fake_bigquery.rows(TABLE)] == [("1", "a")]


def test_a_staging_table_that_cannot_be_deleted_fails_the_import_naming_the_grant(
    vertex_settings: Settings,
    engine: Engine,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    add_at(engine, T0, "a")
    clock = WallClock(T0 + timedelta(minutes=1))
    store = make_store(vertex_settings, engine, bigquery_client, wall_clock=clock)
    fake_bigquery.refuse_deletes = True
    with pytest.raises(VertexFeatureStoreError, match="may delete tables in the staging dataset"):
        store.import_records()
    assert not fake_vertex.syncs

    fake_bigquery.refuse_deletes = False
    clock.now = T0 + timedelta(minutes=2)
    assert store.import_records().rows_imported == 1  # the watermark stayed: merged again
    assert [(r["entity_id"], r["text"]) for r in fake_bigquery.rows(TABLE)] == [("1", "a")]
