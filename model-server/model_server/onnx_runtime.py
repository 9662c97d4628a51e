"""ONNX Runtime on CPU: the model exported to ONNX at first load, fused, cached, run in float32.

ONNX Runtime's fused CPU kernels (Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization) only run where its transformer optimizer rewrites the exported graph
into them: a plain export runs about 20 % slower than eager PyTorch on a small BERT, the fused
graph about as fast, both within float rounding of it. The export and the fusions run once per
model and library version; later loads (and every worker of a machine) reuse the cached file
under MODEL_CACHE_DIR.
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

from model_server.first_token_layer import last_layer_for_first_token
from model_server.runtime import Forward, ForwardOptions

logger = logging.getLogger(__name__)

OPSET = 17
# What `fused` does to the exported graph; part of the cache key, so a change re-exports.
FUSIONS = (
    "fusions-v2: attention raw-mask, skip-layernorm, bias-gelu erf, embed-layernorm; "
    "a BERT classifier's last layer on the first token only"
)
# config.model_type -> the optimizer's model type whose fusions fit that architecture: the two
# the tests check against the pipeline. Other architectures run the plain export (ONNX Runtime
# still applies its generic fusions at load).
OPTIMIZER_MODEL_TYPES = {"bert": "bert", "bart": "bart"}
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
    for name in (torch.__version__, onnxruntime.__version__, str(OPSET), FUSIONS, *input_names):
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
        export(model_path, sample, staging / "plain.onnx")
        fused(model_path, staging / "plain.onnx", staging / "model.onnx")
        (staging / "plain.onnx").unlink()
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
    # Eager attention exports as MatMul/Softmax/MatMul, the pattern the optimizer fuses into
    # one Attention node; scaled_dot_product_attention exports as a pattern it does not know.
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, attn_implementation="eager"
    )
    model = model.float().eval()
    last_layer_for_first_token(model)
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


def fused(model_path: str, source: Path, destination: Path) -> None:
    """The exported graph rewritten into ONNX Runtime's fused transformer kernels, if it has some.

    Only exact rewrites: GELU stays erf-based (no FastGelu tanh approximation), attention takes
    the raw 0/1 mask (any padding side; the mask-index format assumes right padding), and the
    graph is saved at the optimizer's opt_level 0 (its own fusions only), so the file holds no
    kernels specific to this CPU; the session applies ONNX Runtime's level at load.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    model_type = OPTIMIZER_MODEL_TYPES.get(config.model_type)
    if model_type is None:
        logger.info("no ONNX Runtime fusions for model type %r: plain export", config.model_type)
        shutil.copyfile(source, destination)
        return
    options = FusionOptions(model_type)
    options.enable_gelu_approximation = False
    options.enable_gemm_fast_gelu = False
    options.use_raw_attention_mask(True)
    model = optimize_model(
        str(source),
        model_type=model_type,
        num_heads=getattr(config, "num_attention_heads", 0) or 0,
        hidden_size=getattr(config, "hidden_size", 0) or 0,
        optimization_options=options,
        opt_level=0,
        use_gpu=False,
    )
    logger.info("ONNX Runtime fusions: %s", model.get_fused_operator_statistics())
    model.save_model_to_file(str(destination))


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
    # Idle intra-op threads sleep instead of spinning: in a server they share the cores with
    # the tokenizer thread and the event loop (docs/model-server.md, "Threads on a small CPU").
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(path), session_options, providers=["CPUExecutionProvider"]
    )
    names = [node.name for node in session.get_inputs()]

    def forward(inputs: dict[str, np.ndarray]) -> torch.Tensor:
        (logits,) = session.run(None, {name: inputs[name] for name in names})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    return forward
