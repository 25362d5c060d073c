"""bench/step_bench.py's weight copies, a lever measured and not kept: docs/benchmarks.md reports that they
compute autocast's numbers exactly, which holds only if these do."""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

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
    assert not any(hasattr(module, "forward") and "forward" in vars(module) for module in twin.modules())
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
        assert p.dtype == torch.float32
    assert not torch.equal(model.classifier.weight, before[-2])  # the steps did move the weights
