"""A digest of the model the server loaded, so a prediction says which weights made it.

Two checkpoints under one path (a re-trained model copied over the old one) report the same
model name; their digests differ. The digest is sha256 over the model directory's files:
for each regular file, sorted by its path relative to the directory, the path and the file's
own sha256. Every file counts, not only the weight files, since the configuration (the
label order, the entailment id) and the tokenizer change the answers as much as the weights.

Files rather than the loaded state dict, because a file's digest can be kept: it is cached
(`MODEL_CACHE_DIR/digests.json`) under the file's resolved path, size and modification time,
so a restart re-reads nothing unless a file changed; hashing a state dict would read every
parameter back at each load (and depends on dtype and device). The price: the same weights
saved in another format (safetensors vs pickle) digest differently; that is a new checkpoint
to a reader of the receipt anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from batchinfer_protocol.zero_shot import MODEL_DIGEST_PREFIX

CACHE_FILE = "digests.json"
READ_BYTES = 8 * 1024 * 1024
# Directories that are a tool's bookkeeping, not the model: the Hub's download metadata, git.
SKIPPED_DIRECTORIES = frozenset({".cache", ".git", ".huggingface"})


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def model_files(directory: Path) -> list[Path]:
    """The regular files under `directory` (symlinks followed, as a Hub snapshot's are),
    sorted by relative path, bookkeeping directories left out."""
    files = []
    for root, directories, names in os.walk(directory, followlinks=True):
        directories[:] = sorted(d for d in directories if d not in SKIPPED_DIRECTORIES)
        files.extend(Path(root) / name for name in names)
    return sorted(
        (path for path in files if path.is_file()),
        key=lambda p: p.relative_to(directory).as_posix(),
    )


class DigestCache:
    """File digests by resolved path, valid while the file's size and mtime are unchanged."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.path = cache_dir / CACHE_FILE if cache_dir is not None else None
        self.entries: dict[str, dict[str, int | str]] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except ValueError:
                self.entries = {}  # a torn or foreign file: recompute and rewrite it

    def sha256(self, path: Path) -> str:
        resolved = str(path.resolve())
        stat = path.stat()
        entry = self.entries.get(resolved)
        if (
            entry
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            return str(entry["sha256"])
        digest = file_sha256(path)
        self.entries[resolved] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": digest,
        }
        return digest

    def save(self) -> None:
        """Write the cache atomically (servers sharing a cache directory never read half)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False) as file:
            json.dump(self.entries, file)
        os.replace(file.name, self.path)


def model_digest(directory: str | Path, cache_dir: str | Path | None = None) -> str:
    """``sha256:<hex>`` of the model in `directory` (see the module's docstring).

    `cache_dir`: where file digests are kept between loads; None hashes every file.
    ``FileNotFoundError`` when the directory holds no file.
    """
    root = Path(directory)
    files = model_files(root)
    if not files:
        raise FileNotFoundError(f"the model directory {root} holds no files to digest")
    cache = DigestCache(Path(cache_dir) if cache_dir is not None else None)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(cache.sha256(path).encode() + b"\n")
    cache.save()
    return MODEL_DIGEST_PREFIX + digest.hexdigest()
