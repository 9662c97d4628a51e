"""ONNX Runtime on CPU: the model exported to ONNX at first load, cached, and run in float32.

On a CPU, ONNX Runtime's fused kernels (attention, LayerNorm, GELU) run a small cross-encoder
markedly faster than eager PyTorch while staying within float rounding of it. The export runs
once per model and library version; later loads (and every worker of a machine) reuse the
cached file under MODEL_CACHE_DIR.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model_server.runtime import Forward, ForwardOptions

logger = logging.getLogger(__name__)

OPSET = 17
# Files whose bytes define the exported graph; tokenizer files do not.
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


class LogitsOf(torch.nn.Module):
    """The classifier with named tensor inputs and its logits as the one output."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.input_names, inputs, strict=True))
        return self.model(**kwargs, return_dict=True).logits


def cache_key(model_path: str, input_names: Sequence[str]) -> str:
    """A digest of the model's files, its inputs and the exporting libraries' versions."""
    import onnxruntime

    digest = hashlib.sha256()
    for name in (torch.__version__, onnxruntime.__version__, str(OPSET), *input_names):
        digest.update(name.encode() + b"\0")
    found = False
    for name in MODEL_FILES:
        path = Path(model_path) / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0")
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
    if not found:
        raise FileNotFoundError(
            f"MODEL_RUNTIME=onnxruntime needs a local model directory with config.json and "
            f"weights; {model_path!r} has none (download it first, or use MODEL_RUNTIME=torch)"
        )
    return digest.hexdigest()[:24]


def exported_model(model_path: str, sample: dict[str, np.ndarray], cache_dir: str) -> Path:
    """The cached ONNX file of this model, exported now if there is none yet.

    The export writes into a temporary directory beside the cache entry and renames it into
    place, so a crash mid-export or two servers exporting at once never leave a partial file.
    """
    target = Path(cache_dir) / "onnx" / cache_key(model_path, list(sample))
    model_file = target / "model.onnx"
    if model_file.is_file():
        logger.info("using the cached ONNX export %s", model_file)
        return model_file
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        export(model_path, sample, staging / "model.onnx")
        try:
            os.rename(staging, target)
        except OSError:
            if not model_file.is_file():  # another process won the race: use its file
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_file


def export(model_path: str, sample: dict[str, np.ndarray], destination: Path) -> None:
    """Export the float32 classifier with dynamic batch and sequence axes.

    The export traces the model on `sample`, a real padded batch (a BART head needs its <eos>
    tokens to trace); data-dependent checks of the model (BART's equal <eos> counts) are not
    in the graph, so the backend makes them itself before a batch runs.
    """
    from transformers import AutoModelForSequenceClassification

    logger.info("exporting %s to ONNX (once; cached afterwards)", model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).float().eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    input_names = list(sample)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    # The tracer warns where a shape becomes a constant (mask padding, the <eos> check): the
    # graph is checked against the pipeline across lengths in the tests instead.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            LogitsOf(model, input_names),
            tuple(torch.from_numpy(sample[name]) for name in input_names),
            str(destination),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def onnx_forward(
    model_path: str, sample: dict[str, np.ndarray], options: ForwardOptions
) -> Forward:
    """An ONNX Runtime CPU session over the cached export; returns float32 logits.

    `sample` is one padded batch of the model's inputs, by name (see `export`).
    """
    import onnxruntime

    path = exported_model(model_path, sample, options.cache_dir)
    session_options = onnxruntime.SessionOptions()
    session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.intra_op_num_threads = options.threads
    session_options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(path), session_options, providers=["CPUExecutionProvider"]
    )
    names = [node.name for node in session.get_inputs()]

    def forward(inputs: dict[str, np.ndarray]) -> np.ndarray:
        (logits,) = session.run(None, {name: inputs[name] for name in names})
        return np.asarray(logits, dtype=np.float32)

    return forward
