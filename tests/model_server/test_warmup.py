"""Warm-up: every forward shape runs at load, /health waits for it, and no shape is new after.

A shape first seen after the warm-up costs ~100 ms of kernel selection on a GPU in half
precision; `model_server_unwarmed_shapes_total` counts them. Here, on CPU with a tiny model,
mixed lengths and label counts go through the HTTP app and the count must stay 0; with the
warm-up switched off, the same traffic counts every shape it uses, which shows the count
can fail.
"""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from batchinfer_testing.backends import DEFAULT_TEMPLATE, forward_options
from model_server.app import create_app
from model_server.backends.nli import NliBackend
from model_server.cuda_graphs import ShapeGraphs
from model_server.runtime import Forward
from model_server.settings import ServerSettings
from model_server.shapes import ShapePlan, length_buckets, warm_up_shapes

SENTENCE = "my app crashes when I pay the invoice twice and the login page never loads"
WORDS = SENTENCE.split(" ")


def mixed_requests(seed: int = 3) -> list[dict]:
    """Requests of 1-12 texts of 1-60 words (many truncated at 48 tokens), 1-4 labels."""
    rng = random.Random(seed)
    labels = ["mobile", "website", "billing", "account access"]
    requests = []
    for _ in range(12):
        texts = [
            " ".join(rng.choices(WORDS, k=rng.randint(1, 60))) for _ in range(rng.randint(1, 12))
        ]
        requests.append(
            {
                "instances": texts,
                "parameters": {"candidate_labels": labels[: rng.randint(1, 4)]},
            }
        )
    return requests


def metric(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics_text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


def served_metrics(model_dir: Path, warm_up: bool, shapes: str = "all") -> str:
    settings = ServerSettings(
        model_backend="nli",
        model_name_or_path=str(model_dir),
        model_max_batch_size=16,
        model_max_batch_tokens=256,
        model_pad_to_multiple_of=8,
        model_warmup=warm_up,
        model_warmup_shapes=shapes,
    )
    app = create_app(settings, load_on_startup=False)
    app.state.service.load()
    with TestClient(app) as client:
        for body in mixed_requests():
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
        return client.get("/metrics").text


def test_no_shape_is_new_after_the_warm_up(bert_nli_dir: Path) -> None:
    metrics = served_metrics(bert_nli_dir, warm_up=True)
    assert metric(metrics, "model_server_unwarmed_shapes_total") == 0
    # The traffic did run forwards, with padding, and the warm-up ran every planned shape:
    # 6 length buckets (8..48) x the row buckets each allows within 256 tokens.
    assert metric(metrics, 'model_server_forward_tokens_total{kind="real"}') > 1000
    assert metric(metrics, 'model_server_forward_tokens_total{kind="padding"}') > 0
    assert metric(metrics, "model_server_warmup_shapes") == 5 + 5 + 4 + 4 + 3 + 3


def test_without_the_warm_up_the_same_traffic_meets_new_shapes(bert_nli_dir: Path) -> None:
    metrics = served_metrics(bert_nli_dir, warm_up=False)
    assert metric(metrics, "model_server_unwarmed_shapes_total") >= 5
    assert metric(metrics, "model_server_warmup_shapes") == 0


def test_on_cpu_the_warm_up_runs_the_plans_two_ends_and_counts_no_miss(
    bert_nli_dir: Path,
) -> None:
    # MODEL_WARMUP_SHAPES=auto on CPU: the largest shape and the smallest, then traffic meets
    # new shapes, which on CPU cost nothing to count (the module doc of shapes.py).
    metrics = served_metrics(bert_nli_dir, warm_up=True, shapes="auto")
    assert metric(metrics, "model_server_warmup_shapes") == 2
    assert metric(metrics, "model_server_unwarmed_shapes_total") == 0
    assert metric(metrics, 'model_server_forward_tokens_total{kind="real"}') > 1000


def test_the_ends_are_the_largest_and_the_smallest_shape() -> None:
    plan = ShapePlan(max_rows=16, max_tokens=256, lengths=length_buckets(8, 48))
    every = warm_up_shapes(plan, "all")
    assert len(every) == len(plan.shapes()) == 24
    assert warm_up_shapes(plan, "ends") == [every[0], every[-1]] == [(16, 16), (1, 8)]
    # A plan of two shapes or fewer is warmed whole either way.
    tiny = ShapePlan(max_rows=1, max_tokens=256, lengths=(8, 16))
    assert warm_up_shapes(tiny, "ends") == warm_up_shapes(tiny, "all") == [(1, 16), (1, 8)]


@pytest.mark.parametrize(
    ("setting", "device", "scope"),
    [
        ("auto", "cpu", "ends"),
        ("auto", "cuda", "all"),
        ("all", "cpu", "all"),
        ("ends", "cuda", "ends"),
    ],
)
def test_auto_warms_every_shape_on_cuda_only(setting: str, device: str, scope: str) -> None:
    options = forward_options(warm_up_shapes=setting)  # type: ignore[arg-type]
    assert options.warm_up_scope(torch.device(device)) == scope


class GatedNliBackend(NliBackend):
    """An nli backend whose first forward (the warm-up's) waits until the test opens a gate."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.in_warm_up = threading.Event()

    def load_forward(self) -> tuple[Forward, ShapeGraphs | None]:
        forward, graphs = super().load_forward()

        def gated(inputs: dict) -> object:
            self.in_warm_up.set()
            self.gate.wait(timeout=60)
            return forward(inputs)

        return gated, graphs  # type: ignore[return-value]


def test_health_is_503_warming_up_until_every_shape_ran(bert_nli_dir: Path) -> None:
    backend = GatedNliBackend(
        str(bert_nli_dir),
        torch.device("cpu"),
        forward=forward_options(max_batch_size=4, warm_up_shapes="all"),
        default_template=DEFAULT_TEMPLATE,
    )
    app = create_app(ServerSettings(model_backend="nli"), backend=backend, load_on_startup=False)
    loading = threading.Thread(target=app.state.service.load)
    with TestClient(app) as client:
        loading.start()
        assert backend.in_warm_up.wait(timeout=60)
        during = client.get("/health")
        refused = client.post("/predict", json={"instances": ["hello"]})
        backend.gate.set()
        loading.join(timeout=60)
        after = client.get("/health")
    assert during.status_code == 503
    assert during.json()["status"] == "warming_up"
    assert refused.status_code == 503
    assert "warming_up" in refused.json()["error"]
    assert after.status_code == 200
    assert backend.shapes.warmup_shapes == len(backend.runner.plan.shapes())


def test_a_stop_during_the_warm_up_is_a_shutdown_not_an_error(
    bert_nli_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Ctrl-C on `make run` while the model server warms up: it logs that it stopped, no
    # traceback at ERROR, and /health keeps saying it is not ready.
    backend = GatedNliBackend(
        str(bert_nli_dir),
        torch.device("cpu"),
        forward=forward_options(max_batch_size=4),
        default_template=DEFAULT_TEMPLATE,
    )
    app = create_app(ServerSettings(model_backend="nli"), backend=backend, load_on_startup=False)
    service = app.state.service
    failures: list[BaseException] = []

    def load() -> None:
        try:
            service.load()
        except BaseException as error:  # noqa: BLE001 - the test inspects it below
            failures.append(error)

    loading = threading.Thread(target=load)
    with caplog.at_level("INFO", logger="model_server"), TestClient(app) as client:
        loading.start()
        assert backend.in_warm_up.wait(timeout=60)
        backend.stopping.set()
        backend.gate.set()
        loading.join(timeout=60)
        health = client.get("/health")
    assert [type(error).__name__ for error in failures] == ["WarmUpStoppedError"]
    assert health.status_code == 503
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text
    assert "stopped during the warm-up" in caplog.text


@pytest.mark.parametrize("warm_up", [True, False])
def test_answers_do_not_depend_on_the_warm_up(bert_nli_dir: Path, warm_up: bool) -> None:
    """Bucket padding and repeated filler rows change nothing but float rounding."""
    from model_server.backends.base import Instance

    texts = [" ".join(WORDS[: n + 1]) for n in range(len(WORDS))]
    labels = ("mobile", "website", "billing")
    bucketed = NliBackend(
        str(bert_nli_dir),
        torch.device("cpu"),
        forward=forward_options(max_batch_size=8, max_batch_tokens=128, warm_up=warm_up),
        default_template=DEFAULT_TEMPLATE,
    )
    bucketed.load()
    alone = NliBackend(
        str(bert_nli_dir),
        torch.device("cpu"),
        max_batch_size=1,
        forward=forward_options(),
        default_template=DEFAULT_TEMPLATE,
    )
    alone.load()
    together = bucketed.predict([Instance(text, labels) for text in texts])
    one_by_one = [alone.predict([Instance(text, labels)])[0] for text in texts]
    for batched, single in zip(together, one_by_one, strict=True):
        assert batched.labels == single.labels
        assert max(abs(a - b) for a, b in zip(batched.scores, single.scores)) < 1e-5
