"""The `textfit` command: thin subcommands over the library, and the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from textfit import __version__
from textfit.errors import HyperparameterError, TextfitError

log = logging.getLogger("textfit")


def _read_hyperparameters_file(path: str | None) -> dict[str, object]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise HyperparameterError(f"{path}: cannot read the hyperparameters file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise HyperparameterError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); "
                                  'write an object such as {"epochs": "3"}') from None
    if not isinstance(data, dict):
        raise HyperparameterError(f'{path}: expected a JSON object such as {{"epochs": "3"}}')
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from textfit.artifact import check_output
    from textfit.classifier import TextClassifier
    from textfit.hyperparameters import parse_assignments

    given = {**_read_hyperparameters_file(args.hyperparameters), **parse_assignments(args.hp)}
    output = Path(args.output)
    check_output(output, args.overwrite)  # before hours of training, not after
    clf = TextClassifier(args.model_id, given, init_model=args.model, allow_network=args.allow_network)
    clf.fit(args.train, args.validation)
    clf.save(output, overwrite=args.overwrite, tar=args.tar)
    best = clf.history_[clf.best_epoch_ - 1]
    log.info("Saved the model of epoch %d to %s%s", clf.best_epoch_, output, " (and its .tar.gz)" if args.tar else "")
    print(json.dumps({"output": str(output), "best_epoch": clf.best_epoch_, **best}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from textfit.classifier import TextClassifier
    from textfit.inference import verbose_record

    clf = TextClassifier.load(args.model)
    texts = list(args.text) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for row in clf.predict_proba(texts):
        print(json.dumps(verbose_record(row, clf.classes_), ensure_ascii=False))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from textfit.zoo import ZOO, embedded_path

    print(f"{'model_id':<58} {'name':<38} {'hugging face':<50} full fine-tuning defaults")
    for spec in ZOO:
        where = spec.hf_id or "(none known)"
        if spec.embedded:
            where += " [embedded]" if embedded_path() else " [not installed]"
        defaults = " ".join(f"{k}={v}" for k, v in spec.defaults.items())
        print(f"{spec.model_id:<58} {spec.name:<38} {where:<50} {defaults}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textfit", description="Fine-tune and serve text classifiers, offline.")
    parser.add_argument("--version", action="version", version=f"textfit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a pretrained encoder on a data channel")
    train.add_argument("--train", required=True, help="folder holding data.csv (no header: label,text), or a CSV file")
    train.add_argument("--validation", help="validation channel; default: a stratified split of --train")
    train.add_argument("--model-id", help="zoo model_id, Hugging Face repo id or checkpoint folder "
                                          "(default: the embedded all-MiniLM-L6-v2)")
    train.add_argument("--model", help="continue training an earlier textfit model (folder or model.tar.gz)")
    train.add_argument("--output", default="model", help="artifact folder to write (default: ./model)")
    train.add_argument("--hyperparameters", help="JSON file of hyperparameters, SageMaker style (string values)")
    train.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a hyperparameter; repeatable")
    train.add_argument("--tar", action="store_true", help="also write OUTPUT.tar.gz (SageMaker's model.tar.gz)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    train.add_argument("--allow-network", action="store_true", help="let a missing model download from the Hub")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="classify texts with a trained model (JSON lines out)")
    predict.add_argument("--model", required=True, help="artifact folder or model.tar.gz")
    predict.add_argument("--text", action="append", default=[], help="a text to classify; repeatable (default: stdin lines)")
    predict.set_defaults(func=cmd_predict)

    models = sub.add_parser("models", help="list the model zoo and each model's defaults")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; a TextfitError becomes one line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr, force=True)
    try:
        return int(args.func(args))
    except TextfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
