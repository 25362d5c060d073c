"""The shape of every JSON file textfit reads: field names and types, checked before any field is used.

A shape is a dict of field name to kind, written with Python's own types: `int`, `float` (an integer is a
number too), `str`, `bool`, `None`, `Any`, `list[str]`, `dict[str, int]`, `Literal["a", "b"]`, unions
(`str | None`), a nested shape (a dict), a tuple of kinds (any one of them, where a nested shape is among them),
`Maybe(kind)` for a field that may be absent and `Closed({...})` for an object that may hold no other field.
`require` turns the first mismatch into one line that names the file, the field, what it holds, what it should
hold and the fix, raised as the TextfitError subclass the caller names: never an AttributeError or TypeError
from deep inside the code that uses the field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from textfit.errors import ArtifactError, TextfitError

__all__ = ["Closed", "Maybe", "check_config", "check_model_files", "check_tokenizer_config", "found", "like", "problem",
           "read", "require", "wanted"]


@dataclass(frozen=True)
class Maybe:
    """A field that may be absent; when it is there, of `kind`."""

    kind: Any


class Closed(dict[str, Any]):
    """A nested shape whose object may hold no field besides those listed (the code passes it on as keywords)."""


_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "true/false values", dict: "objects",
           list: "lists", type(None): "nulls"}


def found(value: object) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _alternatives(kind: Any) -> tuple[Any, ...] | None:
    if isinstance(kind, tuple):
        return kind
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return None


def wanted(kind: Any) -> str:
    """What a kind asks for, in words."""
    if isinstance(kind, Maybe):
        return wanted(kind.kind)
    if kind is None or kind is type(None):
        return "null"
    if kind is Any or kind is object:
        return "any value"
    if isinstance(kind, Mapping):
        return "an object"
    options = _alternatives(kind)
    if options is not None:  # an integer is a number: "a number or an integer" says it twice
        return " or ".join(wanted(option) for option in options if not (option is int and float in options))
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(option) for option in typing.get_args(kind))
    if origin in (list, dict):
        return f"{'a list' if origin is list else 'an object'} of {_plural(typing.get_args(kind)[-1])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
            list: "a list"}.get(kind, getattr(kind, "__name__", str(kind)))


def _plural(kind: Any) -> str:
    if isinstance(kind, Mapping):
        return "objects"
    if (options := _alternatives(kind)) is not None:
        return " or ".join(_plural(option) for option in options)
    plural = _PLURAL.get(kind) if isinstance(kind, type) else None
    return plural or f"items each {wanted(kind)}"


def _name(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def problem(value: object, kind: Any, where: str = "") -> str | None:
    """Where `value` does not have the shape `kind`, in words ("field 'loop.epoch' is a string, expected an
    integer"); None when it does."""
    if isinstance(kind, Maybe):
        kind = kind.kind
    if isinstance(kind, Mapping):
        if not isinstance(value, dict):
            return _mismatch(value, kind, where)
        for key, sub in kind.items():
            if key in value:
                if (why := problem(value[key], sub, _name(where, key))) is not None:
                    return why
            elif not isinstance(sub, Maybe):
                return f"field {_name(where, key)!r} is missing, expected {wanted(sub)}"
        if isinstance(kind, Closed):
            for key in value:
                if key not in kind:
                    return (f"field {_name(where, key)!r} is not one this file has (it has "
                            f"{', '.join(map(str, kind))})")
        return None
    options = _alternatives(kind)
    if options is not None:
        if any(problem(value, option, where) is None for option in options):
            return None
        if isinstance(value, dict) and sum(isinstance(o, Mapping) for o in options) == 1:
            return problem(value, next(o for o in options if isinstance(o, Mapping)), where)  # the nested field
        return _mismatch(value, kind, where)
    origin = typing.get_origin(kind)
    if origin is Literal:
        ok = any(value == option and type(value) is type(option) for option in typing.get_args(kind))
        return None if ok else _mismatch(value, kind, where, literal=True)
    if origin is list:
        if not isinstance(value, list):
            return _mismatch(value, kind, where)
        (item,) = typing.get_args(kind)
        for i, element in enumerate(value):
            if (why := problem(element, item, f"{where}[{i}]")) is not None:
                return why
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return _mismatch(value, kind, where)
        key_kind, item = typing.get_args(kind)
        for key, element in value.items():
            if problem(key, key_kind) is not None:
                return f"field {where!r} has the key {key!r}, expected {_plural(key_kind)} as keys"
            if (why := problem(element, item, _name(where, key))) is not None:
                return why
        return None
    return None if _is(value, kind) else _mismatch(value, kind, where)


def _is(value: object, kind: Any) -> bool:
    if kind is Any or kind is object:
        return True
    if kind is None or kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _mismatch(value: object, kind: Any, where: str, literal: bool = False) -> str:
    shown = f"{found(value)} ({json.dumps(value)[:40]})" if literal and isinstance(value, str) else found(value)
    if where:
        return f"field {where!r} is {shown}, expected {wanted(kind)}"
    return f"the file holds {shown}, expected {'a JSON object' if isinstance(kind, Mapping) else wanted(kind)}"


def require(data: object, shape: Any, path: Path | str, error: type[TextfitError], fix: str,
            where: str = "") -> dict[str, Any]:
    """`data` as a dict when it has `shape` (a dict of fields, or `dict[str, kind]`); else `error` with one line
    naming `path`, the field and `fix`."""
    why = problem(data, shape, where)
    if why is not None:
        raise error(f"{path}: {why}; {fix}")
    return cast(dict[str, Any], data)  # an object of `shape`: problem() found none


def like(value: object, reference: object, where: str) -> str | None:
    """Where `value` (read from JSON) is not of the kinds of `reference` (what the running code itself would
    write there: an optimizer's or a scheduler's own state), in words; None when it is. A None in the reference
    says nothing about the value; an integer is a number where the reference holds one."""
    if reference is None:
        return None
    if isinstance(reference, bool):
        return None if isinstance(value, bool) else _mismatch(value, bool, where)
    if isinstance(reference, (int, float)):
        return None if _is(value, type(reference)) else _mismatch(value, type(reference), where)
    if isinstance(reference, str):
        return None if isinstance(value, str) else _mismatch(value, str, where)
    if isinstance(reference, (list, tuple)):
        if not isinstance(value, list):
            return _mismatch(value, list, where)
        if not reference:
            return None
        for i, element in enumerate(value):
            model = reference[i] if len(reference) == len(value) else reference[0]
            if (why := like(element, model, f"{where}[{i}]")) is not None:
                return why
        return None
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            return _mismatch(value, dict, where)
        for key, element in value.items():
            if key in reference and (why := like(element, reference[key], _name(where, key))) is not None:
                return why
        return None
    return None  # a kind JSON does not hold (a tensor): the code that uses it checks it


def read(path: Path, shape: Any, error: type[TextfitError], fix: str) -> dict[str, Any]:
    """A JSON file of `shape`: unreadable, not JSON or of another shape, it is one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); {fix}") from None
    except RecursionError:  # nesting deeper than Python's recursion limit
        raise error(f"{path}: the JSON nests too deeply; {fix}") from None
    return require(data, shape, path, error, fix)


# ------------------------------------------------------------------------------------- Hugging Face files

CONFIG_FIX = "the checkpoint is damaged or edited: restore it (or train it again), or correct the field"

CONFIG = {
    "model_type": str,
    "architectures": Maybe(list[str] | None),
    "dtype": Maybe(str | None),
    "torch_dtype": Maybe(str | None),
    "output_hidden_states": Maybe(bool | None),
    "return_dict": Maybe(bool | None),
    "chunk_size_feed_forward": Maybe(int),
    "is_encoder_decoder": Maybe(bool),
    "id2label": Maybe(dict[str, str] | None),
    "label2id": Maybe(dict[str, int] | dict[str, str] | None),
    "problem_type": Maybe(Literal["regression", "single_label_classification", "multi_label_classification"] | None),
    "num_labels": Maybe(int),
    "textfit_pooling": Maybe(Literal["mean"]),
    "transformers_version": Maybe(str | None),
    "auto_map": Maybe(dict[str, Any] | None),
}
"""config.json: the fields textfit reads itself; transformers' own declared types check the rest."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def check_config(path: Path, error: type[TextfitError] = ArtifactError) -> dict[str, Any]:
    """A checkpoint's config.json, of the shape textfit and transformers read: the fields textfit uses itself,
    then every field the architecture's config class declares, with transformers' own validators of its types
    (a wrong type there is otherwise a StrictDataclassFieldValidationError traceback, or worse, a TypeError in
    the middle of a training step)."""
    data = read(path, CONFIG, error, CONFIG_FIX)
    from transformers import CONFIG_MAPPING

    if data["model_type"] not in CONFIG_MAPPING:
        return data  # refused with its own message where the checkpoint loads (checkpoint.py)
    config_class = CONFIG_MAPPING[data["model_type"]]
    validators = getattr(config_class, "__validators__", {})
    declared = {f.name: f.type for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else {}
    for name, value in data.items():
        if name in CONFIG:
            continue  # checked above, with textfit's words
        for validate in validators.get(name, ()):
            try:
                validate(value)
            except TypeError as exc:
                kind = declared.get(name)
                expected = _first_line(exc) if kind is None or isinstance(kind, str) else wanted(kind)
                raise error(f"{path}: field {name!r} is {found(value)}, expected {expected}; {CONFIG_FIX}") from None
            except ValueError as exc:
                raise error(f"{path}: field {name!r}: {_first_line(exc)}; {CONFIG_FIX}") from None
    return data


TOKENIZER_FIX = "the tokenizer files are damaged or edited: restore them (or train again), or correct the field"

_ADDED_TOKEN: Any = {"content": str}
"""An AddedToken as tokenizer files write it: an object with its text as "content"."""
_TOKEN: Any = (str, None, _ADDED_TOKEN)
"""A special token: its text, or an AddedToken."""

TOKENIZER_CONFIG = {
    **{name: Maybe(_TOKEN) for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                                        "cls_token", "mask_token")},
    "additional_special_tokens": Maybe((list[str | dict[str, Any]], None)),
    "extra_special_tokens": Maybe((list[str | dict[str, Any]], dict[str, Any], None)),
    "added_tokens_decoder": Maybe(dict[str, _ADDED_TOKEN]),
    "tokenizer_class": Maybe(str | None),
    "backend": Maybe(str | None),
    "model_max_length": Maybe(int | float | None),
    "model_input_names": Maybe(list[str] | None),
    "padding_side": Maybe(Literal["left", "right"]),
    "truncation_side": Maybe(Literal["left", "right"]),
    "clean_up_tokenization_spaces": Maybe(bool),
    "do_lower_case": Maybe(bool),
    "do_basic_tokenize": Maybe(bool),
    "never_split": Maybe(list[str] | None),
    "strip_accents": Maybe(bool | None),
    "tokenize_chinese_chars": Maybe(bool),
    "add_prefix_space": Maybe(bool),
    "trim_offsets": Maybe(bool),
    "is_local": Maybe(bool),
    "local_files_only": Maybe(bool),
    "auto_map": Maybe(dict[str, Any] | list[Any] | None),
}
"""tokenizer_config.json: the fields transformers' tokenizers read from it (others are passed through)."""


def check_tokenizer_config(path: Path, error: type[TextfitError] = ArtifactError) -> dict[str, Any]:
    return read(path, TOKENIZER_CONFIG, error, TOKENIZER_FIX)


def check_model_files(folder: str | Path, error: type[TextfitError] = ArtifactError) -> None:
    """config.json and tokenizer_config.json of a local checkpoint folder, where they are (a Hub id is not a
    folder: transformers reads what it downloads)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        check_config(folder / "config.json", error)
    if (folder / "tokenizer_config.json").is_file():
        check_tokenizer_config(folder / "tokenizer_config.json", error)
