"""ONNX export of a trained model, its int8 dynamic quantization, and the ONNX Runtime forward pass.

ONNX Runtime runs these encoders about 3x faster than eager PyTorch at batch 1 on CPU, and int8 dynamic
quantization doubles that again at a small accuracy cost, which `export` measures and reports. Both forward
passes take the int64 arrays batching.pad builds; the ONNX Runtime side (OnnxRunner, load_tokenizer) never
imports torch, so that a server on it starts without it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
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


class GraphTokenizer:
    """The artifact's tokenizer.json run by the tokenizers library itself, behind the slice of transformers'
    tokenizer call that batching.encode makes: (texts, truncation, max_length, stride, return_overflowing_tokens)
    in, `input_ids` (and `overflow_to_sample_mapping`) out. transformers' fast tokenizers run the same
    tokenizer.json through the same library (the ids are compared in tests/serving/test_onnx_backend.py); importing
    transformers alone takes most of a second, which a server's start on the ONNX graph does not pay."""

    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        config = _tokenizer_settings(folder)
        try:
            self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises its own exception type for a bad file
            raise ArtifactError(f"{folder / 'tokenizer.json'}: cannot load the tokenizer ({_first_line(exc)}); the "
                                "folder needs its tokenizer files") from None
        self.backend.no_padding()
        pad = config.get("pad_token")
        self.pad_token_id = self.backend.token_to_id(pad) if isinstance(pad, str) else None
        self.direction = "left" if config.get("truncation_side") == "left" else "right"

    def __call__(self, texts: list[str], *, truncation: bool = True, max_length: int, padding: bool = False,
                 stride: int = 0, return_overflowing_tokens: bool = False, return_offsets_mapping: bool = False,
                 return_special_tokens_mask: bool = False) -> dict[str, list[Any]]:
        self.backend.enable_truncation(max_length, stride=stride, strategy="longest_first", direction=self.direction)
        encodings = self.backend.encode_batch(texts, add_special_tokens=True)
        parts, owners = [], []
        for i, encoding in enumerate(encodings):
            for part in (encoding, *encoding.overflowing) if return_overflowing_tokens else (encoding,):
                parts.append(part)
                owners.append(i)
        out: dict[str, list[Any]] = {"input_ids": [e.ids for e in parts]}
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = owners
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in parts]
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in parts]
        return out


def _tokenizer_settings(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json with special_tokens_map.json's tokens under it, each token as its text."""
    import json

    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"{path}: not readable JSON ({_first_line(exc)}); {artifact.DAMAGED}") from None
            if isinstance(data, dict):
                settings.update(data)
    return {k: v.get("content") if isinstance(v, dict) else v for k, v in settings.items()}


def load_tokenizer(folder: Path) -> Any:
    """The artifact's tokenizer for ONNX Runtime inference: its tokenizer.json in the tokenizers library
    (GraphTokenizer), without transformers or torch. A folder without tokenizer.json (a tokenizer that has no
    fast version) goes through AutoTokenizer."""
    from textfit.model import pretrained

    if not (folder / "tokenizer.json").is_file():
        return pretrained.load_tokenizer(str(folder))
    return GraphTokenizer(folder)


class Runner(Protocol):
    """A forward pass, ONNX Runtime's or PyTorch's: padded inputs (batching.pad) in, logits out."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class OnnxRunner:
    """The ONNX Runtime forward pass: inputs as int64 numpy arrays (batching.pad), logits as a numpy array."""

    def __init__(self, path: Path, threads: int | None = None, digest: str | None = None) -> None:
        """`digest`: the graph's recorded sha256. The graph is read once; its digest is computed on another
        thread while ONNX Runtime builds the session from the same bytes (hashlib and the session's build both
        release the GIL), and the session is used only if the digest matches: the check costs no start-up time."""
        import onnxruntime as ort

        if not path.is_file():
            raise ArtifactError(f"{path}: no ONNX model; run `textfit export --model MODEL --format onnx` first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or thread_budget()  # OMP_NUM_THREADS where set, else every core
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        hashing: concurrent.futures.Future[str] | None = None
        source: str | bytes = str(path)
        if digest is not None:
            source = path.read_bytes()
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="textfit-digest")
            hashing = pool.submit(lambda data: hashlib.sha256(data).hexdigest(), source)
            pool.shutdown(wait=False)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own exception types for a damaged graph
            damaged = hashing is not None and hashing.result() != digest
            raise ArtifactError(f"{path}: " + (f"has changed since it was saved (damaged or edited); {artifact.DAMAGED}"
                                               if damaged else f"ONNX Runtime cannot load it ({_first_line(exc)}); "
                                               "re-export it with `textfit export --model MODEL`")) from None
        if hashing is not None and hashing.result() != digest:
            del self.session
            raise ArtifactError(f"{path.parent.parent}: {path.parent.name}/{path.name} has changed since it was saved "
                                f"(damaged or edited); {artifact.DAMAGED}")
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
