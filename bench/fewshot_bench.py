"""Small data: textfit's defaults against SetFit, a frozen encoder with logistic regression, and TF-IDF with
logistic regression, at 8, 16, 32 and 64 labelled rows a class, over several sampling seeds.

    pip install setfit==1.2.0   # the baseline; not a textfit dependency
    python bench/fewshot_bench.py [--sets bbc,debian] [--sizes 8,16,32,64] [--seeds 5]
                                  [--methods textfit,setfit,frozen,tfidf] [--results fewshot.jsonl]

Sets:
- bbc: BBC News (bench/bbc.py, 5 topics, long articles); the 444 test rows of its fixed split are never sampled.
- debian: Debian package descriptions (`apt-cache dumpavail` on this machine) labelled by their archive section
  (games, sound, graphics, science, mail, database): short-to-long technical texts. Descriptions shared by
  several packages are kept once; 100 rows a class are the test set, never sampled.

For each set, size and seed, N rows a class are drawn (random.Random(seed)) from the pool, and every method
trains on exactly those rows and is scored on the whole test set. All use the embedded all-MiniLM-L6-v2 body and
truncate at 128 tokens:
- textfit: TextClassifier() with no hyperparameters (its defaults choose the recipe);
- setfit: SetFit 1.2, its recommended recipe (contrastive pairs, 20 iterations, 1 epoch, batch 16, body lr
  2e-5, then a logistic-regression head), body truncating at 128 tokens as textfit does;
- frozen: mean-pooled normalised embeddings + LogisticRegressionCV (the regularisation chosen by
  cross-validation: the frozen baseline at its best);
- tfidf: TF-IDF of 1-2 grams (sublinear) + LogisticRegressionCV.
Also (not in the default grid): finetune, textfit with its fine-tuning recipe forced; classmeans, textfit's
defaults with the head started from the class means (as past recipes.PROBE_MAX_CELLS) instead of the probe;
textfit-80-steps, textfit's defaults with the recipe's earlier budget of 80 fine-tuning steps; textfit-window,
textfit's defaults predicting long texts as overlapping windows (`long_texts="window"`), with the same model's
truncated accuracy beside it; fewshot-forced, textfit with its small-data recipe forced
(`training_recipe=fewshot`) at any size, scored both ways too.
Training seconds are wall-clock for fitting, from the raw texts (the frozen baseline's embedding of the training
rows included). Each result is appended to --results as it comes, and a run skips what that file already holds,
so a long grid can be run in parts; the table is printed from the file. Each row names its data by a hash of
the set's rows (`fingerprint`): the Debian set is read from this machine's package index, which an apt-get
update can change, and results on other rows are not comparable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from textfit import TextClassifier

sys.path.insert(0, str(Path(__file__).parent))

MAX_LENGTH = 128
DEBIAN_SECTIONS = ("games", "sound", "graphics", "science", "mail", "database")
DEBIAN_TEST_PER_CLASS = 100


def bbc_set() -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str]]:
    import bbc

    train, test = bbc.split(bbc.articles())
    return train, test, bbc.class_names()


def debian_set() -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str]]:
    from multilabel_bench import packages

    seen: set[str] = set()
    rows = []
    for fields in packages():
        section = fields.get("Section", "").split("/")[-1]
        text = " ".join(fields.get("Description", "").replace("\n.", "\n").split())
        if section in DEBIAN_SECTIONS and text and text not in seen:
            seen.add(text)
            rows.append((DEBIAN_SECTIONS.index(section), text))
    rows.sort()  # apt-cache lists packages in an order that changes with the index's sources: not this set
    rng = random.Random(42)
    rng.shuffle(rows)
    test = [r for c in range(len(DEBIAN_SECTIONS)) for r in [r for r in rows if r[0] == c][:DEBIAN_TEST_PER_CLASS]]
    chosen = {id(r) for r in test}
    return [r for r in rows if id(r) not in chosen], test, list(DEBIAN_SECTIONS)


SETS = {"bbc": bbc_set, "debian": debian_set}


def sample(pool: list[tuple[int, str]], per_class: int, seed: int) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    picked = []
    for label in sorted({y for y, _ in pool}):
        picked += rng.sample([r for r in pool if r[0] == label], per_class)
    rng.shuffle(picked)
    return picked


def fit_textfit(train: list[tuple[int, str]], names: list[str], hyperparameters: dict[str, str] | None = None,
                steps: int | None = None) -> tuple[TextClassifier, float]:
    """A TextClassifier fitted with textfit's defaults (or `hyperparameters`; `steps`, the small-data recipe's
    budget in its place), and its training seconds."""
    from textfit import TextClassifier
    from textfit.training import recipes

    budget = recipes.FEWSHOT_STEPS
    recipes.FEWSHOT_STEPS = steps or budget
    try:
        start = time.perf_counter()
        clf = TextClassifier(hyperparameters=hyperparameters).fit([t for _, t in train],
                                                                  [names[y] for y, _ in train])
        return clf, time.perf_counter() - start
    finally:
        recipes.FEWSHOT_STEPS = budget


def _accuracy(predicted: list[object], test: list[tuple[int, str]], names: list[str]) -> float:
    return float(np.mean([p == names[y] for p, (y, _) in zip(predicted, test)]))


def run_textfit(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int,
                hyperparameters: dict[str, str] | None = None, steps: int | None = None) -> dict[str, object]:
    """textfit's defaults (or `hyperparameters`); `steps`, the small-data recipe's budget in its place."""
    clf, seconds = fit_textfit(train, names, hyperparameters, steps)
    predicted = clf.predict([t for _, t in test])
    return {"accuracy": _accuracy(predicted, test, names), "seconds": seconds,
            "recipe": clf.manifest_["training_recipe"]["name"], "long_texts": clf.long_texts_}


def run_textfit_window(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
                       ) -> dict[str, object]:
    """textfit's defaults, predicting with `long_texts="window"`: a text longer than 128 tokens is classified as
    overlapping windows whose probabilities are averaged (`accuracy`); `truncated` is the same model's accuracy
    with SageMaker's truncation, what the `textfit` method scores."""
    clf, seconds = fit_textfit(train, names)
    return {**_windows_and_truncated(clf, test, names), "seconds": seconds}


def _windows_and_truncated(clf: TextClassifier, test: list[tuple[int, str]], names: list[str]) -> dict[str, float]:
    """One model's test accuracy read as windows (`accuracy`, and the seconds that prediction took) and
    truncated."""
    texts = [t for _, t in test]
    truncated = _accuracy(clf.predict(texts, long_texts="truncate"), test, names)
    start = time.perf_counter()
    predicted = clf.predict(texts, long_texts="window")
    return {"accuracy": _accuracy(predicted, test, names), "truncated": truncated,
            "predict_seconds": time.perf_counter() - start}


def run_fewshot_forced(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
                       ) -> dict[str, object]:
    """textfit with its small-data recipe forced whatever the size (`training_recipe=fewshot`), scored with
    windows (`accuracy`) and truncated, as textfit-window: where the small-data line should be drawn."""
    clf, seconds = fit_textfit(train, names, {"training_recipe": "fewshot"})
    return {**_windows_and_truncated(clf, test, names), "seconds": seconds}


def run_finetune(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
                 ) -> dict[str, object]:
    """textfit with its fine-tuning recipe forced: what the defaults did before the small-data recipe."""
    clf, seconds = fit_textfit(train, names, {"training_recipe": "finetune"})
    return {"accuracy": _accuracy(clf.predict([t for _, t in test]), test, names), "seconds": seconds}


def run_classmeans(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
                   ) -> dict[str, object]:
    """textfit's defaults with the head started from the class means, as the recipe does past the probe's
    budget (recipes.PROBE_MAX_CELLS, very many classes): what that start costs against the probe."""
    from textfit.training import recipes

    budget, recipes.PROBE_MAX_CELLS = recipes.PROBE_MAX_CELLS, 0
    try:
        return run_textfit(train, test, names, seed)
    finally:
        recipes.PROBE_MAX_CELLS = budget


def run_textfit_80_steps(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
                         ) -> dict[str, object]:
    """textfit's defaults with the small-data recipe's first budget of fine-tuning steps, 80 (the budget it had
    before bench/recipe_bench.py measured 160 against it: docs/benchmarks.md)."""
    return run_textfit(train, test, names, seed, steps=80)


def run_trained_embeddings(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str],
                           seed: int) -> dict[str, object]:
    """textfit's defaults with the token-embedding table fine-tuned too."""
    return run_textfit(train, test, names, seed, {"freeze_token_embeddings": "False"})


def run_frozen_embeddings(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str],
                          seed: int) -> dict[str, object]:
    """textfit's defaults with the token-embedding table kept as pretrained."""
    return run_textfit(train, test, names, seed, {"freeze_token_embeddings": "True"})


def run_setfit(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
               ) -> dict[str, object]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from textfit.model.zoo import embedded_path

    start = time.perf_counter()
    model = SetFitModel.from_pretrained(str(embedded_path()))
    model.model_body.max_seq_length = MAX_LENGTH
    args = TrainingArguments(num_iterations=20, seed=seed, report_to="none", show_progress_bar=False,
                             save_strategy="no")
    data = Dataset.from_dict({"text": [t for _, t in train], "label": [y for y, _ in train]})
    Trainer(model=model, args=args, train_dataset=data).train()
    seconds = time.perf_counter() - start
    predicted = np.asarray(model.predict([t for _, t in test]))
    return {"accuracy": float(np.mean(predicted == np.array([y for y, _ in test]))), "seconds": seconds}


_EMBEDDINGS: dict[str, np.ndarray] = {}


def _embed(texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalised embeddings of the embedded MiniLM (cached per text: the test set once a set)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from textfit.model.zoo import embedded_path

    missing = [t for t in dict.fromkeys(texts) if t not in _EMBEDDINGS]
    if missing:
        path = str(embedded_path())
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        for i in range(0, len(missing), 64):
            batch = tokenizer(missing[i:i + 64], truncation=True, max_length=MAX_LENGTH, padding=True,
                              return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            _EMBEDDINGS.update(zip(missing[i:i + 64], pooled.numpy()))
    return np.stack([_EMBEDDINGS[t] for t in texts])


def _logistic_cv(n_rows_per_class: int) -> object:
    from sklearn.linear_model import LogisticRegressionCV

    return LogisticRegressionCV(Cs=10, cv=min(5, n_rows_per_class), max_iter=3000)


def run_frozen(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
               ) -> dict[str, object]:
    _embed([t for _, t in test])  # the test set's embeddings are not training time
    start = time.perf_counter()
    for _, t in train:  # embed the training rows afresh (an earlier seed may have drawn them): their cost counts
        _EMBEDDINGS.pop(t, None)
    features = _embed([t for _, t in train])
    per_class = len(train) // len(names)
    clf = _logistic_cv(per_class).fit(features, [y for y, _ in train])  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    predicted = clf.predict(_embed([t for _, t in test]))
    return {"accuracy": float(np.mean(predicted == np.array([y for y, _ in test]))), "seconds": seconds}


def run_tfidf(train: list[tuple[int, str]], test: list[tuple[int, str]], names: list[str], seed: int
              ) -> dict[str, object]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform([t for _, t in train])
    clf = _logistic_cv(len(train) // len(names)).fit(features, [y for y, _ in train])  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    predicted = clf.predict(vectorizer.transform([t for _, t in test]))
    return {"accuracy": float(np.mean(predicted == np.array([y for y, _ in test]))), "seconds": seconds}


METHODS = {"textfit": run_textfit, "setfit": run_setfit, "frozen": run_frozen, "tfidf": run_tfidf,
           "finetune": run_finetune, "classmeans": run_classmeans, "trained-embeddings": run_trained_embeddings,
           "frozen-embeddings": run_frozen_embeddings, "textfit-80-steps": run_textfit_80_steps,
           "textfit-window": run_textfit_window, "fewshot-forced": run_fewshot_forced}


def _key(row: dict[str, object]) -> tuple[object, ...]:
    return row["set"], row.get("data"), row["method"], row["per_class"], row["seed"]


def fingerprint(pool: list[tuple[int, str]], test: list[tuple[int, str]]) -> str:
    """The set's rows, as a short hash: a result is only comparable with results on the same rows (the Debian
    set comes from this machine's package index, which an apt-get update can change)."""
    return hashlib.sha256(json.dumps([pool, test]).encode()).hexdigest()[:12]


def table(results: Path) -> str:
    groups: dict[tuple[object, ...], list[dict[str, object]]] = defaultdict(list)
    for line in results.read_text().splitlines():
        row = json.loads(line)
        groups[(row["set"], row.get("data", "-"), row["per_class"], row["method"])].append(row)
    lines = ["| set | data | rows a class | method | seeds | accuracy (mean ± sd) | training s (mean) |",
             "|---|---|---|---|---|---|---|"]
    for (name, data, per_class, method), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], list(METHODS).index(kv[0][3]))):
        acc = np.array([r["accuracy"] for r in rows], dtype=float)
        secs = np.mean([r["seconds"] for r in rows])
        lines.append(f"| {name} | {data} | {per_class} | {method} | {len(rows)} | {acc.mean():.4f} ± "
                     f"{acc.std():.4f} | {secs:.1f} |")
    return "\n".join(lines)


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn's notices of coming defaults
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="bbc,debian")
    parser.add_argument("--sizes", default="8,16,32,64")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default="textfit,setfit,frozen,tfidf", help=f"of {', '.join(METHODS)}")
    parser.add_argument("--results", type=Path, default=Path("fewshot.jsonl"))
    args = parser.parse_args()
    done = set()
    if args.results.is_file():
        done = {_key(json.loads(line)) for line in args.results.read_text().splitlines()}
    for name in args.sets.split(","):
        pool, test, names = SETS[name]()
        data = fingerprint(pool, test)
        print(f"{name} (data {data}): {len(pool)} rows to sample from, {len(test)} test rows, classes "
              f"{', '.join(names)}", flush=True)
        for per_class in (int(s) for s in args.sizes.split(",")):
            for seed in range(args.seeds):
                train = sample(pool, per_class, seed)
                for method in args.methods.split(","):
                    row = {"set": name, "data": data, "method": method, "per_class": per_class, "seed": seed}
                    if _key(row) in done:
                        continue
                    row.update(METHODS[method](train, test, names, seed))
                    print(json.dumps(row), flush=True)
                    with args.results.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    print(table(args.results))


if __name__ == "__main__":
    main()
