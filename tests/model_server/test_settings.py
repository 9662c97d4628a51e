"""Settings come from the environment, with the design's defaults."""

from __future__ import annotations

import pydantic
import pytest
import torch

from batchinfer_testing.backends import forward_options
from model_server.runtime import resolve_dtype
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


def test_forward_settings_reach_the_backend_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("MODEL_RUNTIME", "onnxruntime")
    monkeypatch.setenv("MODEL_PAD_TO_MULTIPLE_OF", "16")
    monkeypatch.setenv("MODEL_COMPILE", "true")
    options = ServerSettings().forward_options
    assert (options.max_batch_tokens, options.runtime) == (4096, "onnxruntime")
    assert (options.pad_to_multiple_of, options.compile, options.dtype) == (16, True, "auto")


def test_model_fp16_is_a_shorthand_for_float16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FP16", "true")
    assert ServerSettings().forward_options.dtype == "float16"
    monkeypatch.setenv("MODEL_DTYPE", "bfloat16")
    with pytest.raises(pydantic.ValidationError, match="contradicts MODEL_DTYPE"):
        ServerSettings()


@pytest.mark.parametrize("bf16_supported", [True, False])
def test_auto_dtype_on_cuda_is_float16_whether_or_not_bf16_is_supported(
    monkeypatch: pytest.MonkeyPatch, bf16_supported: bool
) -> None:
    """float16 keeps the fp32 answer (99 % same top label); bfloat16 did not (88 %)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda, "torch") == torch.float16
    assert resolve_dtype("bfloat16", cuda, "torch") == torch.bfloat16
    assert resolve_dtype("float32", cuda, "torch") == torch.float32


def test_auto_dtype_on_cpu_is_float32_and_half_precision_is_refused() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, "torch") == torch.float32
    assert resolve_dtype("auto", cpu, "onnxruntime") == torch.float32
    with pytest.raises(ValueError, match="MODEL_DTYPE=bfloat16 needs a CUDA device"):
        resolve_dtype("bfloat16", cpu, "torch")


def test_shape_plan_defaults_follow_the_device() -> None:
    """CPU: small batches of close lengths (little padding); CUDA: big batches, coarse buckets."""
    cpu = forward_options().shape_plan(torch.device("cpu"), 512)
    assert (cpu.max_tokens, cpu.lengths[:3], cpu.lengths[-1]) == (1024, (4, 8, 12), 512)
    cuda = forward_options().shape_plan(torch.device("cuda"), 512)
    assert (cuda.max_tokens, cuda.lengths[:2]) == (32768, (32, 64))
    given = forward_options(max_batch_tokens=4096, pad_to_multiple_of=8)
    plan = given.shape_plan(torch.device("cpu"), 512)
    assert (plan.max_tokens, plan.lengths[:2]) == (4096, (8, 16))
