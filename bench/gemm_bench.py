"""fp32 matrix products on a training step's shapes: the MKL GEMM torch's `linear` calls against oneDNN's.

    python bench/gemm_bench.py [--repeats 20]

MiniLM's linear layers at batch 32 x 128 tokens (4,096 rows of 384 features): the forward products of the
feed-forward block (384 -> 1536, 1536 -> 384) and of a projection (384 -> 384), and the weight-gradient
products of the feed-forward block. Prints GFLOP/s (median of --repeats) for each back end, on torch's
threads: what fp32 training on this CPU can gain from the kernel that computes most of its FLOPs.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

SHAPES = [(4096, 384, 1536), (4096, 1536, 384), (4096, 384, 384), (384, 4096, 1536), (1536, 4096, 384)]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| m x k x n | MKL (linear) GFLOP/s | oneDNN (mkldnn_linear) GFLOP/s |\n|---|---|---|")
    for m, k, n in SHAPES:
        a, weight = torch.randn(m, k), torch.randn(n, k)
        flops = 2 * m * k * n
        mkl = median_seconds(lambda a=a, w=weight: torch.nn.functional.linear(a, w), args.repeats)
        onednn = median_seconds(lambda a=a, w=weight: torch._C._nn.mkldnn_linear(a.to_mkldnn(), w),
                                args.repeats)
        print(f"| {m} x {k} x {n} | {flops / mkl / 1e9:.0f} | {flops / onednn / 1e9:.0f} |")


if __name__ == "__main__":
    main()
