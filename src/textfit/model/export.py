"""ONNX export of a trained model, its int8 dynamic quantization, and the ONNX Runtime forward pass.

ONNX Runtime runs these encoders about 3x faster than eager PyTorch at batch 1 on CPU, and int8 dynamic
quantization doubles that again at a small accuracy cost, which `export` measures and reports. Both forward
passes take the int64 arrays batching.pad builds; the ONNX Runtime side (OnnxRunner, load_tokenizer) never
imports torch, so that a server on it starts without it.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from textfit.core.environment import thread_budget
from textfit.errors import ArtifactError
from textfit.model import artifact

if TYPE_CHECKING:
    import torch

log = logging.getLogger("textfit")

ONNX_DIR = "onnx"
FP32 = "model.onnx"
INT8 = "model.int8.onnx"
OPSET = 17


def onnx_path(folder: Path, quantized: bool) -> Path:
    return folder / ONNX_DIR / (INT8 if quantized else FP32)


def export_onnx(model: torch.nn.Module, input_names: list[str], output: Path) -> Path:
    """Trace the model to ONNX with dynamic batch and sequence axes (TorchScript exporter, opset 17)."""
    import torch

    from textfit.model import architectures

    model = model.eval().float()
    example = {name: torch.ones((2, 8), dtype=torch.long) for name in input_names}
    # Padding in the example, so that the traced graph takes the masking path whatever shortcut the model
    # code has for unpadded inputs.
    example["attention_mask"][1, 5:] = 0
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    # The last layer's tail on the first position only (architectures.first_position_only): the same logits,
    # less work for every request.
    with (artifact.staged(output) as tmp, torch.inference_mode(), warnings.catch_warnings(),
          architectures.first_position_only(model)):
        # The TorchScript exporter is deprecated but exact for these encoders (the dynamo one needs onnxscript);
        # its tracer warns about shape-dependent Python branches, which the padded example exercises.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(tmp), kwargs=example, input_names=input_names,
                          output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return output


def quantize_int8(source: Path, output: Path) -> Path:
    """Dynamic int8 quantization of the weights of MatMul layers (activations stay float).

    The weights take 7 bits (reduce_range): ONNX Runtime multiplies uint8 activations by int8 weights with
    instructions that add pairs of products in 16 bits on CPUs without VNNI (AVX2, Skylake's AVX-512), and 8-bit
    weights overflow there. The artifact may be served on any CPU, so it is quantized for all: on a random tiny
    ModernBERT on an AVX2 CPU, 8-bit weights moved a probability by 0.21, 7-bit ones by 0.03."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with artifact.staged(output) as staged:  # beside the output: the final rename never crosses filesystems
        quantize_dynamic(str(source), str(staged), weight_type=QuantType.QInt8, reduce_range=True)
    return output


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_tokenizer(folder: Path) -> Any:
    """The artifact's tokenizer for ONNX Runtime inference: transformers' generic fast tokenizer over its
    tokenizer.json, which gives the ids AutoTokenizer's class gives (tests/serving/test_onnx_backend.py) without
    what AutoTokenizer imports: transformers' config classes, and torch with them. A folder without
    tokenizer.json (a tokenizer that has no fast version) goes through AutoTokenizer."""
    from textfit.model import pretrained

    if not (folder / "tokenizer.json").is_file():
        return pretrained.load_tokenizer(str(folder))
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    try:
        return TokenizersBackend.from_pretrained(str(folder), local_files_only=True, **pretrained.SAFE)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"{folder}: cannot load the tokenizer ({_first_line(exc)}); the folder needs its "
                            "tokenizer files") from None


class Runner(Protocol):
    """A forward pass, ONNX Runtime's or PyTorch's: padded inputs (batching.pad) in, logits out."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class OnnxRunner:
    """The ONNX Runtime forward pass: inputs as int64 numpy arrays (batching.pad), logits as a numpy array."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ArtifactError(f"{path}: no ONNX model; run `textfit export --model MODEL --format onnx` first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or thread_budget()  # OMP_NUM_THREADS where set, else every core
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own exception types for a damaged graph
            raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({_first_line(exc)}); re-export it with "
                                "`textfit export --model MODEL`") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        width = self.session.get_outputs()[0].shape[-1]
        self.outputs = width if isinstance(width, int) else None
        """The logits' width (the classes), where the graph fixes it."""
        self.path = path

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.input_names}
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)


class TorchRunner:
    """The PyTorch forward pass, fp32, on CPU: the same arrays, viewed as tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        from textfit.model import architectures

        tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
        # first_position_only: the same logits, less work
        with torch.inference_mode(), architectures.first_position_only(self.model):
            return self.model(**tensors).logits.float().numpy()


def runner(model: torch.nn.Module, folder: Path | None, backend: str, input_names: list[str],
           quantized: bool = False, threads: int | None = None) -> Runner:
    """A forward pass for `backend`: torch, or onnx from the artifact's onnx/ folder (exported if missing)."""
    if backend == "torch":
        return TorchRunner(model)
    if backend != "onnx":
        raise ArtifactError(f"unknown backend {backend!r}; use torch or onnx")
    path = onnx_path(folder, quantized) if folder is not None else None
    if path is not None and path.is_file():
        return OnnxRunner(path, threads)
    log.info("No %s in the model folder: exporting it (run `textfit export` to keep one)", INT8 if quantized else FP32)
    with tempfile.TemporaryDirectory(prefix="textfit-onnx-") as tmp:  # the session keeps the graph in memory
        path = export_onnx(model, input_names, Path(tmp) / FP32)
        if quantized:
            path = quantize_int8(path, Path(tmp) / INT8)
        return OnnxRunner(path, threads)
