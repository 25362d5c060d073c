"""One training step of all-MiniLM-L6-v2, lever by lever: what each CPU path in src/textfit/kernels.py,
training.py and optimizers.py buys (docs/benchmarks.md, "What each lever bought").

    python bench/step_bench.py [--tokens 14,128] [--steps 8] [--only fp32,frozen] [--interleave | --parts]

Each configuration runs in its own process (the allocator setting holds for a process, and peak RSS is the
process's): batch 32 of random token ids, the model in training mode (dropout on), forward, backward, gradient
clipping and an AdamW step. Prints milliseconds a step, system-time milliseconds a step and peak RSS.

--interleave runs the chosen configurations in one process instead, a step of each in turn, and prints the
median and fastest step of each: on a shared machine whose speed drifts by 10-20% between runs, the way to
compare two levers. They must share the process-wide settings (dropout and allocator); no peak RSS then.

--parts prints, for each configuration, the median milliseconds of a step's parts (forward with the loss,
backward, gradient clipping, optimizer step): what a step's length costs against what its parameter count does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import statistics
import subprocess
import sys
import time

# name: (precision, attention, dropout, optimizer kernel, keep freed memory, token embeddings trained,
#        last layer's tail on the first position only, a lever measured and not kept: "copies" (WeightCopies)
#        or "fold" (FoldedClipping))
CONFIGS = {
    "transformers defaults, bf16": ("bf16", "sdpa", "native", "foreach", False, True, False, ""),
    "+ fused AdamW": ("bf16", "sdpa", "native", "fused", False, True, False, ""),
    "+ eager attention": ("bf16", "eager", "native", "fused", False, True, False, ""),
    "+ faster dropout mask": ("bf16", "eager", "fast", "fused", False, True, False, ""),
    "+ freed memory kept (bf16)": ("bf16", "eager", "fast", "fused", True, True, False, ""),
    "+ token embeddings frozen (bf16)": ("bf16", "eager", "fast", "fused", True, False, False, ""),
    "+ last layer on [CLS] only (bf16)": ("bf16", "eager", "fast", "fused", True, False, True, ""),
    "+ bf16 weight copies (bf16)": ("bf16", "eager", "fast", "fused", True, False, True, "copies"),
    "+ clipping folded into AdamW (bf16)": ("bf16", "eager", "fast", "fused", True, False, True, "fold"),
    "recomputing attention, bf16": ("bf16", "recompute", "fast", "fused", True, True, False, ""),
    "transformers defaults, fp32": ("fp32", "sdpa", "native", "fused", True, True, False, ""),
    "eager attention, fp32": ("fp32", "eager", "fast", "fused", True, True, False, ""),
    "recomputing attention (fp32)": ("fp32", "recompute", "fast", "fused", True, True, False, ""),
    "+ token embeddings frozen (fp32)": ("fp32", "recompute", "fast", "fused", True, False, False, ""),
    "+ last layer on [CLS] only (fp32)": ("fp32", "recompute", "fast", "fused", True, False, True, ""),
}


class WeightCopies:
    """A lever measured and not kept (docs/benchmarks.md): bf16 copies of the trained nn.Linear weights and
    biases, which the linear layers compute with in the steps, instead of autocast's casts at every forward pass
    (and of the gradients back in the backward). The backward leaves bf16 gradients on the copies;
    `gradients_to_weights` casts them onto the fp32 weights (exact), `refresh` casts the weights into the copies
    after the optimizer step. Same numbers as autocast: the layers compute on the same bf16 values."""

    def __init__(self, model: object) -> None:
        import torch

        self.torch, self.layers, self.weights, self.copies = torch, [], [], []
        for module in model.modules():
            if type(module) is torch.nn.Linear and module.weight.requires_grad:
                self.layers.append((module, self._copy(module.weight),
                                    None if module.bias is None else self._copy(module.bias)))

    def _copy(self, weight: object) -> object:
        self.weights.append(weight)
        self.copies.append(weight.detach().to(self.torch.bfloat16).requires_grad_())
        return self.copies[-1]

    def __enter__(self) -> None:
        for module, weight, bias in self.layers:
            module.forward = functools.partial(self.torch.nn.functional.linear, weight=weight, bias=bias)

    def __exit__(self, *exc: object) -> None:
        for module, _, _ in self.layers:
            del module.forward

    def gradients_to_weights(self) -> None:
        for weight, copy in zip(self.weights, self.copies):
            weight.grad, copy.grad = copy.grad.float(), None

    def refresh(self) -> None:
        with self.torch.no_grad():
            self.torch._foreach_copy_(self.copies, self.weights)


class FoldedClipping:
    """A lever measured and not kept (docs/benchmarks.md): gradient clipping with each gradient's norm taken in
    the backward pass, by a hook, right after autograd has written it (while it is still in the cache), and the
    clipping coefficient handed to fused AdamW as its `grad_scale` (the step divides each gradient by it) instead
    of a separate pass multiplying every gradient. The same norms; the update differs from clip-then-step in the
    last bit where clipping applies (a division by 1/c instead of a multiplication by c)."""

    def __init__(self, trained: list[object]) -> None:
        import torch

        self.torch, self.trained, self.norms, self.active = torch, trained, {}, False
        for i, p in enumerate(trained):
            p.register_post_accumulate_grad_hook(functools.partial(self._norm, i))

    def _norm(self, i: int, p: object) -> None:
        if self.active:
            self.norms[i] = self.torch.linalg.vector_norm(p.grad)

    def __enter__(self) -> None:
        self.norms.clear()
        self.active = True

    def __exit__(self, *exc: object) -> None:
        self.active = False

    def step(self, optimizer: object, max_norm: float) -> None:
        total = self.torch.linalg.vector_norm(self.torch.stack([self.norms[i] for i in range(len(self.trained))]))
        optimizer.grad_scale = self.torch.clamp((total + 1e-6) / max_norm, min=1.0)  # 1 / clip_grad_norm_'s c
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale


def _setup(names: list[str]) -> tuple[object, object]:
    """The process-wide settings the configurations share, then the model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from textfit.model.zoo import embedded_path
    from textfit.training import kernels

    shared = {CONFIGS[n][2] for n in names}, {CONFIGS[n][4] for n in names}
    if any(len(values) > 1 for values in shared):
        raise SystemExit("--interleave: these configurations differ in dropout or the allocator setting, which "
                         "hold for a whole process")
    (dropout,), (keep,) = shared
    if keep:
        kernels.keep_freed_memory()
    if dropout == "fast":
        torch.nn.functional.dropout = kernels.dropout
    torch.manual_seed(0)
    return torch, AutoModelForSequenceClassification.from_pretrained(str(embedded_path()), num_labels=6).train()


def _stepper(torch: object, model: object, name: str, tokens: int) -> object:
    """One timed training step of configuration `name` on `model`, as a function returning its seconds."""
    from textfit.model import architectures
    from textfit.training import kernels

    precision, attention, _, kernel, _, embeddings, first_only, lever = CONFIGS[name]
    table = model.get_input_embeddings().weight
    trained = [p for p in model.parameters() if p is not table or embeddings]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, **{kernel: True})
    folded = FoldedClipping(trained) if lever == "fold" else None
    implementation = kernels.register_attention() if attention == "recompute" else attention
    table.requires_grad_(embeddings)  # before the copies, which are made of the trained weights only
    copies = WeightCopies(model) if lever == "copies" else None
    ids = torch.randint(1000, 20000, (32, tokens))
    labels = torch.randint(0, 6, (32,))

    def step(parts: list[float] | None = None) -> float:
        """Seconds of one step; `parts`, when given, gets those of forward, backward, clipping and AdamW."""
        model.set_attn_implementation(implementation)
        table.requires_grad_(embeddings)
        cut = architectures.first_position_only(model) if first_only else contextlib.nullcontext()
        marks = [time.perf_counter()]
        with cut, copies or contextlib.nullcontext(), folded or contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            marks.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if copies:
                copies.gradients_to_weights()
            marks.append(time.perf_counter())
            if folded:  # clipping is in the optimizer step: its part shows as 0
                marks.append(time.perf_counter())
                folded.step(optimizer, 1.0)
            else:
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                marks.append(time.perf_counter())
                optimizer.step()
            if copies:
                copies.refresh()
        marks.append(time.perf_counter())
        if parts is not None:
            parts[:] = [b - a for a, b in zip(marks, marks[1:])]
        return marks[-1] - marks[0]

    return step


PARTS = ("forward", "backward", "clipping", "optimizer")


def child(name: str, tokens: int, steps: int, parts: bool = False) -> None:
    torch, model = _setup([name])
    step = _stepper(torch, model, name, tokens)
    for _ in range(2):
        step()
    if parts:
        split: list[float] = []
        times = []
        for _ in range(steps):
            step(split)
            times.append(list(split))
        print("RESULT " + json.dumps({part: statistics.median(t[i] for t in times) * 1000
                                      for i, part in enumerate(PARTS)}))
        return
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"ms": (time.perf_counter() - start) / steps * 1000,
                                  "sys_ms": (after.ru_stime - before.ru_stime) / steps * 1000,
                                  "peak_mb": after.ru_maxrss / 1024}))


def interleaved(names: list[str], tokens: int, steps: int) -> None:
    torch, model = _setup(names)
    stepper = {name: _stepper(torch, model, name, tokens) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(steps + 2):
        for name in names:
            seconds = stepper[name]()
            if round_ >= 2:  # two warm-up rounds
                times[name].append(seconds)
    for name in names:
        print(f"{name:<40} {tokens:>6} {statistics.median(times[name]) * 1000:>8.1f} "
              f"{min(times[name]) * 1000:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="14,128")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", help="run only the configurations whose name contains one of these "
                        "comma-separated words")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--interleave", action="store_true", help="the configurations in one process, a step "
                        "of each in turn")
    parser.add_argument("--parts", action="store_true", help="the median of each part of a step")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.child_tokens, args.steps, args.parts)
    chosen = [n for n in CONFIGS if not args.only or any(word in n for word in args.only.split(","))]
    if args.interleave:
        print(f"{'configuration':<40} {'tokens':>6} {'median ms':>8} {'min ms':>8}")
        for tokens in (int(t) for t in args.tokens.split(",")):
            interleaved(chosen, tokens, args.steps)
        return None
    columns = [f"{part:>9}" for part in PARTS] if args.parts else [f"{'ms/step':>8} {'sys ms':>7} {'peak MB':>8}"]
    print(f"{'configuration':<40} {'tokens':>6} " + " ".join(columns))
    for tokens in (int(t) for t in args.tokens.split(",")):
        for name in chosen:
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--child-tokens", str(tokens),
                                   "--steps", str(args.steps)] + (["--parts"] if args.parts else []),
                                  capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
            r = json.loads(lines[-1].removeprefix("RESULT "))
            values = ([f"{r[part]:>9.1f}" for part in PARTS] if args.parts
                      else [f"{r['ms']:>8.1f} {r['sys_ms']:>7.1f} {r['peak_mb']:>8.0f}"])
            print(f"{name:<40} {tokens:>6} " + " ".join(values), flush=True)


if __name__ == "__main__":
    main()
