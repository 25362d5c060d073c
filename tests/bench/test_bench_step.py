"""bench/step_bench.py's weight copies, a lever measured and not kept: docs/benchmarks.md reports that they
compute autocast's numbers exactly, which holds only if these do."""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import step_bench  # noqa: E402


def _train(model: torch.nn.Module, copies: step_bench.WeightCopies | None, steps: int = 4) -> list[float]:
    """AdamW steps under bf16 autocast, with dropout on, clipped as textfit clips; the losses."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-2, fused=True)
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (8, 11))
    labels = torch.tensor([0, 1] * 4)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)  # the same dropout masks in both runs
        with copies if copies is not None else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if copies is not None:
                copies.gradients_to_weights()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            if copies is not None:
                copies.refresh()
        losses.append(float(loss.detach()))
    return losses


def test_weight_copies_train_the_same_weights_as_autocast(tiny_bert: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2).train()
    model.get_input_embeddings().weight.requires_grad_(False)
    twin = copy.deepcopy(model)
    copies = step_bench.WeightCopies(twin)
    assert len(copies.layers) == 2 * 6 + 2  # every trained linear layer: 6 a layer, the pooler, the head
    before = [p.detach().clone() for p in model.parameters()]

    assert _train(model, None) == _train(twin, copies)
    assert not any("forward" in vars(module) for module in twin.modules())  # the layers' own forward again
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
        assert p.dtype == torch.float32
    assert not torch.equal(model.classifier.weight, before[-2])  # the steps did move the weights


def test_folded_clipping_steps_as_clip_then_step_does(tiny_bert: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2).eval()
    twin = copy.deepcopy(model)
    ids = torch.randint(5, model.config.vocab_size, (8, 11))
    labels = torch.tensor([0, 1] * 4)
    trained, twins = list(model.parameters()), list(twin.parameters())
    folded = step_bench.FoldedClipping(twins)
    norms = []
    for net, params in ((model, trained), (twin, twins)):
        # eps as large as the gradients: the update then depends on their scale, which the clipping sets
        optimizer = torch.optim.AdamW(params, lr=1e-2, eps=1.0, fused=True)
        with folded if net is twin else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(net(input_ids=ids).logits * 50, labels)  # a norm past 1
            loss.backward()
            if net is twin:
                norms.append(float(torch.linalg.vector_norm(torch.stack([folded.norms[i] for i in range(len(twins))]))))
                folded.step(optimizer, 1.0)
            else:
                norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
                optimizer.step()
    assert norms[0] == pytest.approx(norms[1], rel=1e-6) and norms[0] > 1  # clipping applied
    assert not hasattr(optimizer, "grad_scale")
    for (name, p), q in zip(model.named_parameters(), twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
