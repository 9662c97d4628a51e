"""The model's digest: which weights made a prediction, in /health and in every answer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from batchinfer_protocol.zero_shot import decode_model, decode_model_digest
from batchinfer_testing.nli_models import RandomInit, build_bert_nli
from model_server.app import create_app
from model_server.model_digest import DigestCache, model_digest
from model_server.settings import ServerSettings


def served_digests(model_dir: Path, cache_dir: Path) -> tuple[dict, dict]:
    """(/health body, /predict body) of a server on `model_dir`."""
    settings = ServerSettings(
        model_backend="nli",
        model_name_or_path=str(model_dir),
        model_max_batch_size=4,
        model_cache_dir=str(cache_dir),
    )
    app = create_app(settings, load_on_startup=False)
    app.state.service.load()
    with TestClient(app) as client:
        health = client.get("/health").json()
        answer = client.post("/predict", json={"instances": ["my card was charged twice"]})
    assert answer.status_code == 200, answer.text
    return health, answer.json()


def test_two_checkpoints_under_one_path_have_different_digests(tmp_path: Path) -> None:
    """A re-trained model copied over the old one: same name, other weights, other digest."""
    model_dir = tmp_path / "model"
    build_bert_nli(model_dir, init=RandomInit(seed=0, std=0.3))
    first_health, first = served_digests(model_dir, tmp_path / "cache")
    same_health, same = served_digests(model_dir, tmp_path / "cache")
    shutil.rmtree(model_dir)
    build_bert_nli(model_dir, init=RandomInit(seed=1, std=0.3))
    _, second = served_digests(model_dir, tmp_path / "cache")

    assert decode_model(first) == decode_model(second) == str(model_dir)
    assert decode_model_digest(first) == first_health["model_digest"]
    assert decode_model_digest(first) == decode_model_digest(same) == same_health["model_digest"]
    assert decode_model_digest(second) != decode_model_digest(first)
    assert first["predictions"][0]["scores"] != second["predictions"][0]["scores"]


def test_same_files_elsewhere_give_the_same_digest(tmp_path: Path, bert_nli_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bert_nli_dir, copy)
    assert model_digest(copy) == model_digest(bert_nli_dir)
    assert model_digest(copy).startswith("sha256:")
    assert len(model_digest(copy)) == 7 + 64
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert model_digest(copy) != model_digest(bert_nli_dir)


def test_a_file_is_hashed_again_only_when_its_size_or_mtime_changes(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    cache_dir = tmp_path / "cache"
    first = model_digest(model, cache_dir)
    # Same size and mtime, other bytes: the cache answers (what a restart relies on)...
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_digest(model, cache_dir) == first
    # ...a new mtime makes it read the file again.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert model_digest(model, cache_dir) != first
    assert model_digest(model, None) == model_digest(model, cache_dir)
    assert str(weights.resolve()) in DigestCache(cache_dir).entries


def test_an_empty_directory_has_no_digest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no files"):
        model_digest(tmp_path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m"}, None),
        ({"model": "m", "model_digest": None}, None),
        ({"model_digest": "sha256:" + "0" * 64}, "sha256:" + "0" * 64),
    ],
)
def test_old_servers_answer_without_a_digest(body: dict, expected: str | None) -> None:
    assert decode_model_digest(body) == expected


@pytest.mark.parametrize("digest", ["0" * 64, "sha256:" + "0" * 63, "sha256:" + "G" * 64, 5])
def test_a_malformed_digest_is_refused(digest: object) -> None:
    with pytest.raises(ValueError, match="malformed model digest"):
        decode_model_digest({"model_digest": digest})
