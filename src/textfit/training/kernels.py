"""Faster CPU paths for the training steps, each measured. Each reaches no further than what asks for it: the
dropout the thread that trains (another thread's dropout stays torch's), the attention the model being trained,
for its steps (validation and serving run the model's own), and the allocator setting, which glibc cannot undo,
a process that asks for it (`textfit train` and `textfit sagemaker train` do; `fit` does not). `enabled = False`
turns them all off.

Fine-tuning a small encoder on a CPU spends much of a step outside the matrix products. Measured on
all-MiniLM-L6-v2 in training mode, batch 32, 2 cores, bf16:

- Dropout draws one Bernoulli sample per element from torch's CPU generator (about 4.5 ns each): at 128 tokens
  the attention probabilities alone are 6.3 million elements a layer, and dropout took 216 of a 685 ms step.
  `dropout` below draws 64 random bits per 4 elements and compares 16-bit integers: 17 ms instead of 38 ms
  for the forward and backward pass of that tensor, 603 instead of 751 ms a step. The mask and the scale are
  applied in one pass (`_apply`), not two: about 3% of a step at 128 tokens, the same numbers.
- glibc hands allocations above its mmap threshold back to the kernel when they are freed, so every step
  re-faults the embedding table's gradient (47 MB) page by page: 21 ms of system time a step at 14 tokens.
  `keep_freed_memory` raises the thresholds, so freed blocks are reused: 102 -> 89 ms a step, for about 40 MB
  more resident memory.
- Freed blocks stay resident under either threshold setting, and as batches of other shapes and the validation
  pass free them the heap fragments: a whole default job on 4,000 review-length texts peaked 246 MB above its
  first epoch. `release_freed_memory` hands their pages back once an epoch (malloc_trim); with the best
  weights copied in place (training/loop.py) the job's peak went from 2,686 to 2,579 MB in the same time.
- Eager attention keeps every layer's softmax output, dropped probabilities and dropout mask for the backward
  pass; `attention` recomputes them there instead: in fp32 at 128 tokens 1,593 instead of 1,628 ms a step and
  1,969 instead of 2,375 MB (in bf16 it is slower than eager, so training.py runs it in fp32 only).
- On a CPU without AVX-512 (2 cores of an AVX2 EPYC, fp32, 128 tokens), three more: the random bits from
  numpy's SFC64 instead of torch's Mersenne Twister, masks applied as uint8 instead of bool, and q, k, v made
  contiguous before the batched products, with dropout's scale moved to the smaller tensors: 2,190 -> 2,060
  ms a step (median of 12, interleaved in one process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

enabled = True
"""Whether training uses the paths below. False: torch's dropout, transformers' eager attention in place of the
recomputing one, and `keep_freed_memory` leaves the allocator as it is (to compare, or to keep torch's random
stream of dropout masks). Read when a training run starts."""

# The keep decision compares a uniform 16-bit integer with a threshold, so the drop probability is p rounded to
# a multiple of 1/65536 (0.1 -> 0.100006); the scale is 1/(1 - that), so the expectation stays exact.
_LEVELS = 65536


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """Dropout's keep decisions (uint8, 1 with probability 1 - p), decided by torch's default generator, and the
    scale the kept values take. uint8, not bool: multiplying a float tensor by a bool one first copies the mask into the
    float dtype (a full-size tensor written and read again), by a uint8 one it converts each element in the loop:
    7.1 against 2.9 ms for batch 32 x 12 heads x 128 x 128 attention probabilities in fp32."""
    dropped = round(p * _LEVELS)
    n = math.prod(shape)
    bits = torch.from_numpy(_random_bits((n + 3) // 4))
    scale = _LEVELS / (_LEVELS - dropped) if dropped < _LEVELS else 0.0  # p = 1: nothing is kept
    return (bits.view(torch.int16)[:n].view(shape) >= dropped - _LEVELS // 2).view(torch.uint8), scale


def _random_bits(count: int) -> np.ndarray:
    """`count` random 64-bit words from numpy's SFC64, seeded by one draw from torch's default generator, so
    torch.manual_seed and a checkpoint's restored generator state still decide every mask. torch's own CPU
    generator (a Mersenne Twister) fills 1.6 million words in 13.8 ms, SFC64 in 3.1: the attention masks of
    one training step at 128 tokens are six such fills."""
    seed = int(torch.empty((), dtype=torch.int64).random_())
    return np.random.SFC64(seed).random_raw(count).view(np.int64)


def _apply(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """x * keep * scale in one pass over x instead of two (0 + scale * x * keep: the same rounding as
    multiplying the kept values by the scale, so the same numbers as x * keep then * scale)."""
    return torch.addcmul(x.new_zeros(()), x, keep, value=scale)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, ctx.scale = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        return _apply(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return _apply(grad, keep, ctx.scale), None


_native_dropout = torch.nn.functional.dropout


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """torch.nn.functional.dropout, with the faster mask for CPU tensors; the native one everywhere else."""
    if (not training or inplace or input.device.type != "cpu" or not input.is_floating_point()
            or not 0 < p < 1 or round(p * _LEVELS) in (0, _LEVELS)):
        return _native_dropout(input, p, training, inplace)
    return _Dropout.apply(input, p)


# While a fast_dropout block is under way in some thread, torch.nn.functional.dropout is `_routed`: a call from a
# thread inside a block takes the faster mask, a call from any other thread goes where it went before (torch's
# own). Both transformers' attention functions and nn.Dropout call the function by name, and the eager ones are
# module-level functions, so replacing the model's Dropout modules would not reach the attention probabilities,
# whose dropout is most of the saving. A torch function mode would route the calls with nothing replaced, but it
# sends every torch call of the block through Python: a MiniLM forward pass in bf16 at 14 tokens took 163 instead
# of 156 ms of CPU time (1 thread, busy machine), 4% more, and the clipping and optimizer step 1,300 such calls more.
_here = threading.local()  # .fast: this thread is inside a block
_lock = threading.Lock()
_blocks = 0  # blocks under way, in every thread
_outside: Callable[..., torch.Tensor] = _native_dropout  # where other threads' calls go: what was there before


def _routed(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    if getattr(_here, "fast", False):
        return dropout(input, p, training, inplace)
    return _outside(input, p, training, inplace)


def _enter() -> None:
    global _blocks, _outside
    with _lock:
        if _blocks == 0:
            _outside = torch.nn.functional.dropout
            torch.nn.functional.dropout = _routed
        _blocks += 1


def _leave() -> None:
    global _blocks
    with _lock:
        _blocks -= 1
        if _blocks == 0 and torch.nn.functional.dropout is _routed:  # not if someone replaced it since
            torch.nn.functional.dropout = _outside


@contextmanager
def fast_dropout(device: torch.device) -> Iterator[None]:
    """Within the block, this thread's dropout on the CPU uses the faster mask; another thread's is what it was
    (torch's), and once no thread is in a block, torch.nn.functional.dropout is again what it was."""
    if device.type != "cpu" or not enabled or getattr(_here, "fast", False):
        yield
        return
    _enter()
    _here.fast = True
    try:
        yield
    finally:
        _here.fast = False
        _leave()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks of up to 1 GiB for reuse instead of unmapping them, for the rest of the
    process; False where the C library is not glibc, or with `enabled` False.

    This is the process's setting, not a training run's: glibc has no call that reads these thresholds back, and
    setting either one switches off, for good, the threshold glibc otherwise adjusts to the blocks a program frees
    (mallopt(3)). So no training run sets it; whoever owns the process does (`textfit train`, `textfit sagemaker
    train`), or a program that trains in its own process and wants the speed calls this once.
    """
    return enabled and _set_thresholds()


def release_freed_memory() -> bool:
    """Hand the pages of freed blocks back to the kernel (glibc's malloc_trim), once an epoch: blocks freed
    between batches of other shapes, and the validation pass's, otherwise stay resident however the allocator
    thresholds are set, and a job's peak grows with them over the epochs. Changes no setting of the process;
    False where the C library is not glibc, or with `enabled` False."""
    trim = _malloc_trim()
    return enabled and trim is not None and bool(trim(0))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


@functools.cache
def _set_thresholds() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


# ---------------------------------------------------------------------------------------------- attention


class _Attention(torch.autograd.Function):
    """softmax(q k^T * scaling + mask), dropout, times v: transformers' eager attention, but what the backward
    pass needs is recomputed there instead of kept. Eager attention keeps the softmax output (in fp32), the
    dropped probabilities and the dropout mask of every layer, batch x heads x length x length each: about 56 MB
    a layer at batch 32 and 128 tokens in fp32. This keeps the keep-mask (one byte an element) and the inputs;
    recomputing q k^T and the softmax costs about 3% of a layer's FLOPs at 128 tokens."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scaling: float, p: float) -> torch.Tensor:
        # q, k and v arrive as transposed views of the projections' outputs; batched products of such views run
        # at about 55 GFLOP/s here against 90 for contiguous ones (batch 32 x 12 heads, 128 x 32 per head, fp32),
        # so they are copied once, and the copies are what the backward pass keeps
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        probs = _probabilities(q, k, mask, scaling)
        keep, scale = keep_mask(probs.shape, p) if p > 0 else (None, 1.0)
        if keep is not None:
            probs.mul_(keep)
        ctx.save_for_backward(q, k, v, mask, keep)
        ctx.scaling, ctx.scale = scaling, scale
        # dropout's scale on the output, a length / head size times smaller than the probabilities
        return torch.matmul(probs, v).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, mask, keep = ctx.saved_tensors
        probs = _probabilities(q, k, mask, ctx.scaling)
        grad = grad.to(q.dtype) * ctx.scale  # the scale once, on the smaller tensor
        kept = probs if keep is None else probs.mul(keep)
        grad_v = torch.matmul(kept.transpose(-1, -2), grad)
        del kept
        grad_weights = torch.matmul(grad, v.transpose(-1, -2))
        if keep is not None:
            grad_weights.mul_(keep)
        grad_scores = torch.ops.aten._softmax_backward_data(grad_weights, probs, -1, probs.dtype)
        grad_q = torch.matmul(grad_scores, k).mul_(ctx.scaling)
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q).mul_(ctx.scaling)
        return grad_q, grad_k, grad_v, None, None, None


def _probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scaling)  # in q's dtype, as eager attention under autocast
    if mask is not None:
        scores = scores.add_(mask) if mask.is_floating_point() else scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """An attention function of transformers' AttentionInterface (the signature of its eager one, whose other
    keyword arguments it ignores as eager does): q, k, v are batch x heads x length x head size."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    p = dropout if module.training else 0.0
    if p > 0 and round(p * _LEVELS) == 0:
        p = 0.0
    if torch.is_autocast_enabled(query.device.type):  # q, k, v come from autocast's linear layers, in its dtype
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    with torch.autocast(query.device.type, enabled=False):
        out = _Attention.apply(query, key, value, attention_mask, scaling, p)
    return out.transpose(1, 2).contiguous(), None


ATTENTION = "textfit_recompute"


@functools.cache
def register_attention() -> str:
    """Make `attention` an implementation transformers models can switch to (set_attn_implementation), with
    the additive float masks of the eager one; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)
    return ATTENTION
