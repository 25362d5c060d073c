"""The small-data recipe's settings, compared on development rows: never on the test rows fewshot_bench scores.

    python bench/recipe_bench.py [--sets bbc,debian] [--sizes 8,64] [--seeds 3] [--first-seed 0] [--dev 60]
        --variants "base=;steps160=steps=160;lr5e-5=learning_rate=5e-5;len256=max_seq_length=256"

For each set, size and seed, the training rows are fewshot_bench's sample (the same rows its textfit runs train
on), and the development rows are --dev rows a class drawn from the rest of the pool with another seed, so
the settings recipes.py fixes are chosen without looking at the rows the benchmark reports. A variant is
`name=settings`: hyperparameters as textfit takes them (`learning_rate=5e-5`), and `steps=N` for the recipe's
budget of optimizer steps (recipes.FEWSHOT_STEPS); several are joined by commas, none is the defaults. Each
variant's accuracy on the development rows and its training seconds are printed a run at a time, and a table
of means at the end (with each variant's mean difference from the first one, seed by seed).

Three settings try levers textfit does not have, from outside the library, so that their measurements can be
reproduced (docs/benchmarks.md, "Averaging weights, and a contrastive term, in the recipe" and "Long articles
cut into training rows"):
- `average=ema:D`: the rows are scored with an exponential moving average of the weights, decay D, updated
  after every optimizer step from the first one's result on; `average=wise:A`: with the weights interpolated
  between those before the first step (the linear probe's start) and the trained ones, A the trained share
  (WiSE-FT, Wortsman et al., 2022); `average=start`: with the weights before the first step. Torch's global
  optimizer-step hooks, for one run.
- `supcon=L:T`: a supervised contrastive term (Khosla et al., 2020) on the L2-normalised features the head
  reads, temperature T (0.1 when left out), added to each batch's mean cross-entropy with weight L. Wrappers of
  architectures.features and training.batch_loss, for one run: everything is put back after it.
- `chunks=K`: each training text longer than the encoder's 128 tokens becomes up to K training rows, its
  consecutive pieces of at most 126 tokens (cut between words, sliced from the original text), each with the
  text's label; the development rows are read as always (truncated). The pieces can take the rows past the
  small-data rule's size: add `training_recipe=fewshot` to keep the recipe (and its budget of steps). The
  seconds are the fit's, cutting excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fewshot_bench import MAX_LENGTH, SETS, _accuracy, fingerprint, fit_textfit, sample  # noqa: E402


def parse_variants(text: str) -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, settings = part.partition("=")
        pairs = [kv.split("=", 1) for kv in settings.split(",") if kv]
        variants[name] = {k.strip(): v.strip() for k, v in pairs}
    return variants


def dev_rows(pool: list[tuple[int, str]], train: list[tuple[int, str]], per_class: int, seed: int
             ) -> list[tuple[int, str]]:
    """per_class rows a class of the pool that training did not draw (another seed than the sample's)."""
    taken = set(train)
    rest = [r for r in pool if r not in taken]
    rng = random.Random(10_000 + seed)
    picked = []
    for label in sorted({y for y, _ in rest}):
        members = [r for r in rest if r[0] == label]
        picked += rng.sample(members, min(per_class, len(members)))
    return picked


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss (their L_out) over a batch: for each row with another row of
    its class in the batch, the mean over those positives of -log softmax of the cosine similarity / T among
    all the other rows; averaged over such rows (0 when there are none)."""
    z = torch.nn.functional.normalize(features.float(), dim=1)
    similarity = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = similarity.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(dim=1)
    anchors = count > 0
    if not anchors.any():
        return similarity.sum() * 0.0
    per_row = -(log_prob.masked_fill(~positives, 0.0).sum(dim=1)[anchors] / count[anchors])
    return per_row.mean()


@contextlib.contextmanager
def contrastive_term(weight: float, temperature: float) -> Iterator[None]:
    """training.batch_loss with the supervised contrastive term added (weight x the term, times the rows, as
    batch_loss returns a sum that training divides by the rows), on the features of the batch's forward pass."""
    from textfit.model import architectures
    from textfit.training import loop as training

    features, batch_loss = architectures.features, training.batch_loss
    last: list[torch.Tensor] = []
    added = 0

    def keep_features(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = features(model, inputs)
        if torch.is_grad_enabled():  # a training step's forward pass, not evaluation or prediction
            last[:] = [out]
        return out

    def with_term(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, int]:
        nonlocal added
        loss, right = batch_loss(logits, labels, weights)
        if torch.is_grad_enabled() and last and not labels.dtype.is_floating_point:
            loss = loss + weight * len(labels) * supcon_loss(last.pop(), labels, temperature)
            added += 1
        return loss, right

    architectures.features, training.batch_loss = keep_features, with_term
    try:
        yield
    finally:
        architectures.features, training.batch_loss = features, batch_loss
    if not added:  # the model's forward pass does not read architectures.features (not mean-pooled)
        raise RuntimeError("supcon: no training step computed the features; the term was never added")


class WeightAverages:
    """Torch's global optimizer-step hooks, for one fit: the weights before an optimizer's first step and an
    exponential moving average of them after each step (of the optimizer that stepped most: the fine-tuning
    one, not a probe's)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.start: dict[int, list[torch.Tensor]] = {}
        self.ema: dict[int, list[torch.Tensor]] = {}
        self.params: dict[int, list[torch.Tensor]] = {}
        self.steps: dict[int, int] = defaultdict(int)

    def before(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        key = id(optimizer)
        if key not in self.start:
            self.params[key] = [p for group in optimizer.param_groups for p in group["params"]]
            self.start[key] = [p.detach().clone() for p in self.params[key]]

    def after(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        key = id(optimizer)
        self.steps[key] += 1
        now = [p.detach() for p in self.params[key]]
        if key not in self.ema:
            self.ema[key] = [p.clone() for p in now]
        else:
            torch._foreach_lerp_(self.ema[key], now, 1.0 - self.decay)

    @contextlib.contextmanager
    def hooked(self) -> Iterator[WeightAverages]:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        handles = [register_optimizer_step_pre_hook(self.before), register_optimizer_step_post_hook(self.after)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def weights(self, kind: str, share: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The trained parameters and what to put in them: `ema`, `start`, or `wise` (share x trained +
        (1 - share) x start)."""
        key = max(self.steps, key=self.steps.__getitem__)
        params, start = self.params[key], self.start[key]
        if kind == "ema":
            return params, self.ema[key]
        if kind == "start":
            return params, start
        if kind == "wise":
            return params, [s + share * (p.detach() - s) for p, s in zip(params, start)]
        raise ValueError(f"average={kind}: use ema:DECAY, wise:SHARE or start")


def chunked(rows: list[tuple[int, str]], pieces: int, tokens: int = MAX_LENGTH - 2) -> list[tuple[int, str]]:
    """Each row longer than `tokens` tokens as up to `pieces` rows of at most `tokens` tokens (the embedded
    tokenizer's; 128 less the two special tokens), cut between words where a word boundary is in reach and
    sliced from the original text."""
    from textfit.model.pretrained import load_tokenizer
    from textfit.model.zoo import resolve_model

    tokenizer = load_tokenizer(resolve_model(None).path)
    out = []
    for label, text in rows:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        if len(offsets) <= tokens:
            out.append((label, text))
            continue
        first, taken = 0, 0
        while first < len(offsets) and taken < pieces:
            end = min(first + tokens, len(offsets))  # exclusive
            if end < len(offsets):  # not the text's last piece: cut between words where one ends in reach
                cut = end
                while cut > first + 1 and offsets[cut][0] == offsets[cut - 1][1]:
                    cut -= 1  # token `cut` goes on with the word before it: cut before that word instead
                end = cut if cut > first + 1 else end
            out.append((label, text[offsets[first][0]:offsets[end - 1][1]]))
            first, taken = end, taken + 1
    return out


def run(train: list[tuple[int, str]], dev: list[tuple[int, str]], names: list[str], settings: dict[str, str]
        ) -> dict[str, object]:
    """fewshot_bench's textfit run, scored on the development rows, with the variant's levers."""
    hyperparameters = {k: v for k, v in settings.items() if k not in ("steps", "average", "supcon", "chunks")}
    if "chunks" in settings:
        train = chunked(train, int(settings["chunks"]))
    steps = int(settings["steps"]) if "steps" in settings else None
    kind, _, value = settings.get("average", "").partition(":")
    averages = WeightAverages(float(value) if kind == "ema" else 0.0)
    with contextlib.ExitStack() as stack:
        if "supcon" in settings:
            weight, _, temperature = settings["supcon"].partition(":")
            stack.enter_context(contrastive_term(float(weight), float(temperature or 0.1)))
        if kind:
            stack.enter_context(averages.hooked())
        clf, seconds = fit_textfit(train, names, hyperparameters, steps)
    if kind:
        params, chosen = averages.weights(kind, float(value or 0.0))
        model_params = {id(p) for p in clf.model_.parameters()}
        if not all(id(p) in model_params for p in params):
            raise RuntimeError("the optimizer's parameters are not the fitted model's: cannot score averages")
        with torch.no_grad():
            torch._foreach_copy_(params, chosen)
    # Truncated, as every recorded run scored its development rows (the recipe is what is compared here).
    predicted = clf.predict([t for _, t in dev], long_texts="truncate")
    return {"accuracy": _accuracy(predicted, dev, names), "seconds": seconds,
            "recipe": clf.manifest_["training_recipe"]["name"]}


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="bbc,debian")
    parser.add_argument("--sizes", default="8,64")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="sampling seeds first-seed .. first-seed+seeds-1")
    parser.add_argument("--dev", type=int, default=60, help="development rows a class")
    parser.add_argument("--variants", default="base=")
    parser.add_argument("--results", type=Path, help="append each run here as a JSON line")
    args = parser.parse_args()
    variants = parse_variants(args.variants)
    runs: dict[tuple[str, int, str], list[dict[str, object]]] = defaultdict(list)
    for name in args.sets.split(","):
        pool, test, names = SETS[name]()
        data = fingerprint(pool, test)
        for per_class in (int(s) for s in args.sizes.split(",")):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                train = sample(pool, per_class, seed)
                dev = dev_rows(pool, train, args.dev, seed)
                for variant, settings in variants.items():
                    row = {"set": name, "data": data, "per_class": per_class, "seed": seed, "variant": variant,
                           "settings": settings, **run(train, dev, names, settings)}
                    runs[(name, per_class, variant)].append(row)
                    print(json.dumps(row), flush=True)
                    if args.results:
                        with args.results.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
    first = next(iter(variants))
    print("| set | rows a class | variant | seeds | dev accuracy (mean ± sd) | against the first (mean) | s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for (name, per_class, variant), rows in runs.items():
        acc = np.array([r["accuracy"] for r in rows], dtype=float)
        base = np.array([r["accuracy"] for r in runs[(name, per_class, first)]], dtype=float)
        delta = acc - base[:len(acc)]
        print(f"| {name} | {per_class} | {variant} | {len(rows)} | {acc.mean():.4f} ± {acc.std():.4f} | "
              f"{delta.mean():+.4f} | {np.mean([r['seconds'] for r in rows]):.1f} |")


if __name__ == "__main__":
    main()
