"""Fixtures of the Google Cloud backends: fakes of Vertex AI, BigQuery and the token endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.clients.vertex_feature_store import SOURCE_SCHEMA
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of
from batchinfer_testing.fakes.google import (
    FakeBigQuery,
    FakeTokenEndpoint,
    FakeVertex,
    bigquery_server,
    token_server,
    vertex_server,
)
from batchinfer_testing.gcp_names import PROJECT, TABLE


@pytest.fixture(scope="session")
def _bigquery_service() -> Iterator[tuple[FakeBigQuery, str]]:
    fake = FakeBigQuery()
    with bigquery_server(fake) as url:
        yield fake, url


@pytest.fixture(scope="session")
def _vertex_service(
    _bigquery_service: tuple[FakeBigQuery, str],
) -> Iterator[tuple[FakeVertex, str]]:
    fake_bigquery, _ = _bigquery_service
    fake = FakeVertex(source=lambda: fake_bigquery.latest(TABLE))
    with vertex_server(fake) as endpoint:
        yield fake, endpoint


@pytest.fixture
def fake_bigquery(_bigquery_service: tuple[FakeBigQuery, str]) -> FakeBigQuery:
    """The fake, empty but for the source table, which Terraform creates before any import."""
    fake, _ = _bigquery_service
    fake.reset()
    fake.create_table(TABLE, [field.to_api_repr() for field in SOURCE_SCHEMA])
    return fake


@pytest.fixture
def fake_vertex(_vertex_service: tuple[FakeVertex, str]) -> FakeVertex:
    fake, _ = _vertex_service
    fake.reset()
    return fake


@pytest.fixture
def bigquery_client(_bigquery_service: tuple[FakeBigQuery, str]) -> Iterator[bigquery.Client]:
    """The real google-cloud-bigquery client, talking to the fake over plain HTTP."""
    _, url = _bigquery_service
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": url},
    )
    yield client
    client.close()


@pytest.fixture
def vertex_settings(tmp_path: Path, _vertex_service: tuple[FakeVertex, str]) -> Iterator[Settings]:
    """Vertex backends on the fakes, with a fresh SQLite app database."""
    _, endpoint = _vertex_service
    yield Settings(
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'batchinfer.db'}",
        feature_store="vertex",
        vertex_project=PROJECT,
        vertex_region="europe-west4",
        vertex_bigquery_table=TABLE,
        vertex_admin_endpoint=endpoint,
        vertex_serving_endpoint=endpoint,
        vertex_prediction_endpoint=endpoint,
        vertex_sync_timeout_seconds=5.0,
        model_url=f"vertex://projects/{PROJECT}/locations/europe-west4/endpoints/123",
        model_timeout_seconds=5.0,
    )
    db.dispose_engines()


@pytest.fixture
def engine(vertex_settings: Settings) -> Engine:
    return engine_of(vertex_settings)


def service_account_info(token_uri: str) -> dict[str, str]:
    """A service-account key with a fresh RSA key, whose tokens come from ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "test-key",
        "private_key": pem,
        "client_email": f"dagster@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }


@pytest.fixture
def token_endpoint() -> Iterator[tuple[FakeTokenEndpoint, str]]:
    fake = FakeTokenEndpoint()
    with token_server(fake) as uri:
        yield fake, uri


@pytest.fixture
def adc_key_file(
    tmp_path: Path,
    token_endpoint: tuple[FakeTokenEndpoint, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Application Default Credentials: a key file whose token endpoint is a local fake."""
    _, uri = token_endpoint
    path = tmp_path / "key.json"
    path.write_text(json.dumps(service_account_info(uri)))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path
