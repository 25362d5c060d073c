"""bench/recipe_bench.py's levers from outside the library (weight averages, a contrastive term, long texts cut
into pieces): the numbers docs/benchmarks.md reports from them are only as good as these, so they are checked
against hand computations and on a real fit of a tiny encoder."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST, make_rows, write_csv
from textfit import TextClassifier
from textfit.data.channels import read_channel
from textfit.model import architectures
from textfit.training import loop as training

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import recipe_bench  # noqa: E402

FEWSHOT = {**FAST, "training_recipe": "fewshot", "epochs": "3"}


def test_supcon_loss_is_khoslas_l_out_by_hand() -> None:
    torch.manual_seed(0)
    feats = torch.randn(5, 4)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the last row has no positive: not an anchor
    tau = 0.5
    z = torch.nn.functional.normalize(feats, dim=1)
    per_anchor = []
    for i in range(4):
        others = [a for a in range(5) if a != i]
        denominator = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        positives = [p for p in others if labels[p] == labels[i]]
        per_anchor.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in positives)
                          / len(positives))
    assert float(recipe_bench.supcon_loss(feats, labels, tau)) == pytest.approx(sum(per_anchor) / 4, rel=1e-5)
    assert float(recipe_bench.supcon_loss(feats, torch.arange(5), tau)) == 0.0  # no pairs at all


def test_weight_averages_follow_the_steps() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in layer.parameters()]
    averages = recipe_bench.WeightAverages(decay=0.5)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    after_each = []
    with averages.hooked():
        for _ in range(3):
            optimizer.zero_grad()
            layer(torch.randn(4, 3)).pow(2).sum().backward()
            optimizer.step()
            after_each.append([p.detach().clone() for p in layer.parameters()])
    optimizer.step()  # the hooks are gone: this step is not counted
    assert averages.steps[id(optimizer)] == 3
    params, ema = averages.weights("ema", 0.0)
    for k, value in enumerate(ema):  # ((w1 * 0.5 + w2 * 0.5) * 0.5 + w3 * 0.5)
        expected = (after_each[0][k] * 0.5 + after_each[1][k] * 0.5) * 0.5 + after_each[2][k] * 0.5
        torch.testing.assert_close(value, expected)
    for value, first in zip(averages.weights("start", 0.0)[1], start):
        torch.testing.assert_close(value, first)
    for value, first, now in zip(averages.weights("wise", 0.25)[1], start, params):
        torch.testing.assert_close(value, first + 0.25 * (now.detach() - first))
    with pytest.raises(ValueError, match="average=swa"):
        averages.weights("swa", 0.0)


def test_the_contrastive_term_changes_a_real_fit_and_is_removed_after_it(tiny_bert: Path, tmp_path: Path) -> None:
    folder = tmp_path / "small"
    write_csv(folder / "data.csv", make_rows(40))
    features, batch_loss = architectures.features, training.batch_loss
    plain = TextClassifier(str(tiny_bert), FEWSHOT).fit(read_channel(folder))
    with recipe_bench.contrastive_term(1.0, 0.1):
        term = TextClassifier(str(tiny_bert), FEWSHOT).fit(read_channel(folder))
    assert (architectures.features, training.batch_loss) == (features, batch_loss)
    again = TextClassifier(str(tiny_bert), FEWSHOT).fit(read_channel(folder))  # training is deterministic: the term made the change
    weight = "classifier.weight"
    state = {name: dict(clf.model_.named_parameters())[weight].detach() for name, clf in
             (("plain", plain), ("term", term), ("again", again))}
    torch.testing.assert_close(state["plain"], state["again"])
    assert not torch.allclose(state["plain"], state["term"])


def test_the_start_weights_are_the_fitted_models_parameters_before_fine_tuning(tiny_bert: Path, tmp_path: Path) -> None:
    """The hooks see the fine-tuning optimizer's parameters, which are the fitted model's: putting the start back
    gives the model before fine-tuning (encoder as pretrained), not some copy's weights."""
    folder = tmp_path / "small"
    write_csv(folder / "data.csv", make_rows(40))
    averages = recipe_bench.WeightAverages(decay=0.9)
    with averages.hooked():
        clf = TextClassifier(str(tiny_bert), FEWSHOT).fit(read_channel(folder))
    params, start = averages.weights("start", 0.0)
    fitted = {id(p) for p in clf.model_.parameters()}
    assert params and all(id(p) in fitted for p in params)
    named = dict(clf.model_.named_parameters())
    name = "bert.embeddings.word_embeddings.weight"
    before = dict(zip([id(p) for p in params], start))[id(named[name])]
    saved = load_file(tiny_bert / "model.safetensors")  # a BertModel's: keys without the "bert." prefix
    torch.testing.assert_close(before, saved[name.removeprefix("bert.")])
    assert not torch.allclose(before, named[name].detach())  # fine-tuning moved it


def test_chunks_cover_a_long_text_in_pieces_that_fit_and_keep_short_ones_whole() -> None:
    from textfit.model.pretrained import load_tokenizer
    from textfit.model.zoo import resolve_model

    tokenizer = load_tokenizer(resolve_model(None).path)
    words = [f"word{k} of the article, number {k}." for k in range(200)]
    long_text = " ".join(words)
    rows = recipe_bench.chunked([(3, long_text), (1, "a short one")], pieces=100)
    pieces = [text for label, text in rows if label == 3]
    assert rows[-1] == (1, "a short one")
    assert len(pieces) > 5
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 126 for p in pieces)
    assert " ".join(pieces).split() == long_text.split()  # nothing lost or repeated, cut between words
    assert len(recipe_bench.chunked([(3, long_text)], pieces=2)) == 2
