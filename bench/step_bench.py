"""One training step of all-MiniLM-L6-v2, lever by lever: what each CPU path in src/textfit/kernels.py,
training.py and optimizers.py buys (docs/benchmarks.md, "What each lever bought").

    python bench/step_bench.py [--tokens 14,128] [--steps 8] [--only fp32,frozen]

Each configuration runs in its own process (the allocator setting holds for a process, and peak RSS is the
process's): batch 32 of random token ids, the model in training mode (dropout on), forward, backward, gradient
clipping and an AdamW step. Prints milliseconds a step, system-time milliseconds a step and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

# name: (precision, attention, dropout, optimizer kernel, keep freed memory, token embeddings trained,
#        last layer's tail on the first position only)
CONFIGS = {
    "transformers defaults, bf16": ("bf16", "sdpa", "native", "foreach", False, True, False),
    "+ fused AdamW": ("bf16", "sdpa", "native", "fused", False, True, False),
    "+ eager attention": ("bf16", "eager", "native", "fused", False, True, False),
    "+ faster dropout mask": ("bf16", "eager", "fast", "fused", False, True, False),
    "+ freed memory kept (bf16)": ("bf16", "eager", "fast", "fused", True, True, False),
    "+ token embeddings frozen (bf16)": ("bf16", "eager", "fast", "fused", True, False, False),
    "+ last layer on [CLS] only (bf16)": ("bf16", "eager", "fast", "fused", True, False, True),
    "recomputing attention, bf16": ("bf16", "recompute", "fast", "fused", True, True, False),
    "transformers defaults, fp32": ("fp32", "sdpa", "native", "fused", True, True, False),
    "eager attention, fp32": ("fp32", "eager", "fast", "fused", True, True, False),
    "recomputing attention (fp32)": ("fp32", "recompute", "fast", "fused", True, True, False),
    "+ token embeddings frozen (fp32)": ("fp32", "recompute", "fast", "fused", True, False, False),
    "+ last layer on [CLS] only (fp32)": ("fp32", "recompute", "fast", "fused", True, False, True),
}


def child(name: str, tokens: int, steps: int) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from textfit import architectures, kernels
    from textfit.zoo import embedded_path

    precision, attention, dropout, kernel, keep, embeddings, first_only = CONFIGS[name]
    if keep:
        kernels.keep_freed_memory()
    if dropout == "fast":
        torch.nn.functional.dropout = kernels.dropout
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(embedded_path()), num_labels=6).train()
    model.set_attn_implementation(kernels.register_attention() if attention == "recompute" else attention)
    model.get_input_embeddings().weight.requires_grad_(embeddings)
    if first_only:
        architectures.first_position_only(model).__enter__()  # for the whole process
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, **{kernel: True})
    ids = torch.randint(1000, 20000, (32, tokens))
    labels = torch.randint(0, 6, (32,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()

    for _ in range(2):
        step()
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"ms": (time.perf_counter() - start) / steps * 1000,
                                  "sys_ms": (after.ru_stime - before.ru_stime) / steps * 1000,
                                  "peak_mb": after.ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="14,128")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", help="run only the configurations whose name contains one of these "
                        "comma-separated words")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.child_tokens, args.steps)
    print(f"{'configuration':<40} {'tokens':>6} {'ms/step':>8} {'sys ms':>7} {'peak MB':>8}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        for name in CONFIGS:
            if args.only and not any(word in name for word in args.only.split(",")):
                continue
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--child-tokens", str(tokens),
                                   "--steps", str(args.steps)], capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
            r = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"{name:<40} {tokens:>6} {r['ms']:>8.1f} {r['sys_ms']:>7.1f} {r['peak_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
