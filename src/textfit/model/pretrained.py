"""Loading Hugging Face checkpoints safely: no code from a model file ever runs, weights come from safetensors.

A checkpoint's config.json may name Python files of its own (`auto_map`) and transformers would import them
if asked to trust them; textfit never does (`trust_remote_code=False` on every load, so nothing prompts on
standard input either), and an architecture transformers does not know is refused before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from textfit.errors import ArtifactError


class _Safe(TypedDict):
    trust_remote_code: bool


# Every load passes these: no code from the checkpoint, never a pickle.
SAFE: _Safe = {"trust_remote_code": False}


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a damaged checkpoint raises inside transformers and safetensors."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError)


def _quiet_transformers() -> None:
    """transformers prints load reports and progress bars; textfit says what matters itself."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def check_architecture_known(path: str) -> str | None:
    """The model_type of a local checkpoint, refused when transformers has no built-in class for it.

    Returns None for a Hub repo id (not yet downloaded): transformers then applies the same rule itself.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{config_file}: unreadable ({exc}); the checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_file}: expected a JSON object; the checkpoint is damaged")
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        custom = " and ships code of its own (auto_map), which textfit never runs" if "auto_map" in config else ""
        raise ArtifactError(f"{config_file}: model_type {model_type!r} is not an architecture transformers knows"
                            f"{custom}; use a checkpoint of a built-in architecture (BERT, RoBERTa, DeBERTa, ...)")
    return model_type


def load_config(path: str, allow_network: bool = False) -> Any:
    from transformers import AutoConfig

    check_architecture_known(path)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=not allow_network, **SAFE)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: cannot read config.json ({_first_line(exc)}); the checkpoint is damaged") from None


def load_tokenizer(path: str, allow_network: bool = False) -> Any:
    from transformers import AutoTokenizer

    check_architecture_known(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=not allow_network, **SAFE)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: cannot load the tokenizer ({_first_line(exc)}); "
                            "the folder needs its tokenizer files") from None


def load_classifier_model(path: str, config: Any, allow_network: bool = False, **kwargs: Any) -> Any:
    """AutoModelForSequenceClassification from safetensors only, with the config given (head settings applied)."""
    from transformers import AutoModelForSequenceClassification

    _quiet_transformers()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, config=config, local_files_only=not allow_network, use_safetensors=True, **SAFE, **kwargs)
    except _load_errors() as exc:
        raise ArtifactError(f"{path}: cannot load the model ({_first_line(exc)}); it needs config.json and an "
                            "intact model.safetensors") from None


def load_encoder(path: str) -> Any:
    """The bare encoder (AutoModel), to check that an imported checkpoint loads."""
    from transformers import AutoModel

    _quiet_transformers()
    check_architecture_known(path)
    try:
        return AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True, **SAFE)
    except _load_errors() as exc:
        raise ArtifactError(f"{path}: the checkpoint does not load ({_first_line(exc)}); it needs config.json, "
                            "model.safetensors and the tokenizer files") from None


def _first_line(exc: BaseException) -> str:
    """transformers' messages run to several lines; the error line textfit prints is one."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
