"""ID-token auth for a private Cloud Run model server, with a real key file and token endpoint."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from batchinfer_dagster.clients.google_id_token import GoogleIdTokenAuth
from batchinfer_dagster.clients.model_client import ModelRequestError
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import model_client_of
from batchinfer_testing.fakes.google import FakeTokenEndpoint

AUDIENCE = "https://model-server-abc123-ew.a.run.app"


def claims(token: str) -> dict[str, object]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def echo_authorization(seen: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization", ""))
        texts = json.loads(request.content)["instances"]
        return httpx.Response(
            200,
            json={
                "predictions": [{"sequence": t, "labels": ["a"], "scores": [1.0]} for t in texts],
                "model": "m",
            },
        )

    return httpx.MockTransport(handler)


@pytest.mark.usefixtures("adc_key_file")
def test_requests_carry_a_cached_id_token_for_the_audience(
    token_endpoint: tuple[FakeTokenEndpoint, str],
) -> None:
    fake, _ = token_endpoint
    seen: list[str] = []
    auth = GoogleIdTokenAuth(AUDIENCE)
    client = httpx.Client(transport=echo_authorization(seen), auth=auth)

    for _ in range(3):
        client.post(f"{AUDIENCE}/predict", json={"instances": ["x"]}).raise_for_status()

    assert len(fake.issued) == 1
    assert seen == [f"Bearer {fake.issued[0]}"] * 3
    assert claims(fake.issued[0])["aud"] == AUDIENCE


@pytest.mark.usefixtures("adc_key_file")
def test_an_expired_token_is_fetched_again(token_endpoint: tuple[FakeTokenEndpoint, str]) -> None:
    fake, _ = token_endpoint
    fake.lifetime_seconds = 1  # google-auth treats tokens this close to expiry as expired
    auth = GoogleIdTokenAuth(AUDIENCE)

    first, second = auth.token(), auth.token()

    assert len(fake.issued) == 2
    assert (first, second) == tuple(fake.issued)


@pytest.mark.usefixtures("adc_key_file")
def test_http_model_client_sends_the_token(token_endpoint: tuple[FakeTokenEndpoint, str]) -> None:
    from batchinfer_dagster.clients.model_client import PredictParameters

    fake, _ = token_endpoint
    seen: list[str] = []
    client = model_client_of(Settings(), url=AUDIENCE, auth=GoogleIdTokenAuth(AUDIENCE))
    client.client = httpx.Client(transport=echo_authorization(seen), auth=client.client.auth)

    predictions = client.predict(["a", "b"], PredictParameters(("a",))).predictions

    assert [p.sequence for p in predictions] == ["a", "b"]
    assert seen == [f"Bearer {fake.issued[0]}"]


def test_missing_credentials_are_a_request_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(ModelRequestError, match="no Google credentials to sign an ID token for"):
        GoogleIdTokenAuth(AUDIENCE).token()
