"""The forward path that keeps a GPU busy, checked where it can run: on CPU.

- BART's classification head without host reads gives transformers' logits bit for bit;
- a pool's results are copied back once and land in their rows;
- CUDA graphs: on CPU nothing is captured, every planned shape still runs once at warm-up;
- the stage clock charges each stage, and the app exports it with the device's busy time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from batchinfer_testing.backends import forward_options
from model_server.app import create_app
from model_server.backends.nli import NliBackend, eos_head_logits, has_eos_head
from model_server.cuda_graphs import ShapeGraphs
from model_server.runtime import BucketedForward, ForwardOptions, gather_rows
from model_server.settings import ServerSettings
from model_server.shapes import PaddingTokens, ShapeLedger, ShapePlan
from model_server.stage_clock import STAGES, StageClock


def test_eos_head_equals_transformers_head(bart_nli_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(bart_nli_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(bart_nli_dir)
    pairs = [
        ["Hi", "This example is billing."],
        ["The app crashes on my phone every time I open it.", "This example is mobile."],
        ["I was charged twice. " * 6, "This example is account access."],
    ]
    inputs = tokenizer(pairs, padding=True, truncation="only_first", return_tensors="pt")
    assert has_eos_head(model)
    with torch.inference_mode():
        expected = model(**inputs, use_cache=False).logits
        actual = eos_head_logits(model, model.config.eos_token_id)(dict(inputs))
    assert torch.equal(actual, expected)


def test_bert_has_no_eos_head(bert_nli_dir: Path) -> None:
    assert not has_eos_head(AutoModelForSequenceClassification.from_pretrained(bert_nli_dir))


def test_a_pools_parts_land_in_their_rows() -> None:
    parts = [((2, 0), torch.tensor([[2.0], [0.0]])), ((1,), torch.tensor([[1.0]]))]
    assert gather_rows(3, parts).tolist() == [[0.0], [1.0], [2.0]]
    with pytest.raises(ValueError, match="at least one part"):
        gather_rows(0, [])


def test_on_cpu_no_graph_is_captured_and_every_shape_runs_once() -> None:
    calls: list[tuple[int, ...]] = []

    def eager(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(tuple(tensors["input_ids"].shape))
        return tensors["input_ids"][:, :1].float()

    cpu = torch.device("cpu")
    graphs = ShapeGraphs(eager, cpu)
    assert not graphs.enabled
    plan = ShapePlan(max_rows=4, max_tokens=32, lengths=(4, 8, 16))
    runner = BucketedForward(
        forward=lambda inputs: eager({k: torch.from_numpy(v) for k, v in inputs.items()}),
        plan=plan,
        ledger=ShapeLedger(),
        input_names=["input_ids", "attention_mask"],
        padding=PaddingTokens(0),
        graphs=graphs,
    )
    runner.warm_up({"input_ids": [101, 7, 8, 102]})
    assert sorted(calls) == sorted(plan.shapes())
    assert graphs.captured == {}
    assert runner.ledger.graphs == 0
    assert runner.ledger.warmup_shapes == len(plan.shapes()) == 3 + 3 + 2
    # Served batches run through the same object, eagerly.
    out = graphs({"input_ids": np.ones((2, 4), np.int64), "attention_mask": np.ones((2, 4))})
    assert out.shape == (2, 1)
    assert calls[-1] == (2, 4)


@pytest.mark.parametrize(
    ("options", "device", "expected"),
    [
        (forward_options(cuda_graphs=True), "cpu", False),
        (forward_options(cuda_graphs=False), "cuda", False),
        (forward_options(cuda_graphs=True, compile=True), "cuda", False),
        (forward_options(cuda_graphs=True, runtime="onnxruntime"), "cuda", False),
        (forward_options(cuda_graphs=True), "cuda", True),
    ],
)
def test_graphs_only_for_the_eager_torch_runtime_on_cuda(
    options: ForwardOptions, device: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    graphs = options.shape_graphs(lambda tensors: tensors["input_ids"], torch.device(device))
    assert (graphs is not None) == expected


def test_settings_carry_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().forward_options.cuda_graphs is False
    monkeypatch.setenv("MODEL_CUDA_GRAPHS", "true")
    assert ServerSettings().forward_options.cuda_graphs is True


def test_stage_clock_charges_each_stage_with_injected_clocks() -> None:
    ticks = iter([0.0, 0.5, 10.0, 13.0])
    clock = StageClock(cpu_clock=lambda: 0.0, wall_clock=lambda: next(ticks))
    seen: list[tuple[str, float, float]] = []
    clock.on_stage = lambda stage, cpu, wall: seen.append((stage, cpu, wall))
    with clock.stage("tokenize"):
        pass
    with clock.stage("forward"):
        pass
    assert seen == [("tokenize", 0.0, 0.5), ("forward", 0.0, 3.0)]
    assert clock.wall == {"tokenize": 0.5, "assemble": 0.0, "forward": 3.0, "postprocess": 0.0}
    clock.device_busy(0.25)
    clock.device_busy(0.0)
    assert clock.device_seconds == 0.25
    with pytest.raises(ValueError, match="unknown stage"), clock.stage("forwrd"):
        pass


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_show_each_stage_and_the_device_busy_time(bert_nli_dir: Path) -> None:
    settings = ServerSettings(
        model_backend="nli", model_name_or_path=str(bert_nli_dir), model_max_batch_size=8
    )
    app = create_app(settings, load_on_startup=False)
    app.state.service.load()
    backend: NliBackend = app.state.service.backend
    assert backend.stages.cpu["tokenize"] == 0.0  # the warm-up is no stage
    with TestClient(app) as client:
        texts = [f"the login page never loads {i} " * (i + 1) for i in range(12)]
        assert client.post("/predict", json={"instances": texts}).status_code == 200
        text = client.get("/metrics").text
    for stage in STAGES:
        wall = metric(text, f'model_server_stage_seconds_total{{clock="wall",stage="{stage}"}}')
        assert wall > 0, stage
        assert wall == pytest.approx(backend.stages.wall[stage])
    busy = metric(text, "model_server_device_busy_seconds_total")
    assert 0 < busy <= backend.stages.wall["forward"]
    assert metric(text, "model_server_cuda_graphs") == 0
