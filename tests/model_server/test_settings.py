"""Settings come from the environment, with the design's defaults."""

from __future__ import annotations

import pydantic
import pytest

from model_server.settings import ServerSettings


def test_defaults_follow_the_vertex_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIP_HTTP_PORT", "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE", "MODEL_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    settings = ServerSettings()
    assert settings.aip_http_port == 8080
    assert settings.aip_predict_route == "/predict"
    assert settings.aip_health_route == "/health"
    assert settings.model_backend == "embedding"
    assert settings.default_labels == ["mobile", "website", "billing", "account access"]


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIP_HTTP_PORT", "9001")
    monkeypatch.setenv("MODEL_BACKEND", "nli")
    monkeypatch.setenv("MODEL_MAX_BATCH_SIZE", "128")
    monkeypatch.setenv("MODEL_DEFAULT_LABELS", "a, b ,c")
    settings = ServerSettings()
    assert settings.aip_http_port == 9001
    assert settings.model_backend == "nli"
    assert settings.model_max_batch_size == 128
    assert settings.default_labels == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("MODEL_BACKEND", "gpt"), ("AIP_PREDICT_ROUTE", "predict"), ("MODEL_MAX_BATCH_SIZE", "0")],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError, match=name.lower()):
        ServerSettings()
