"""The faster CPU training paths compute what the native ones do: dropout's rate, scale and gradient, on every
element position, reproducibly; and they stay inside the block that asks for them."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
import torch

from textfit.training import kernels


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_dropout_drops_at_the_rate_asked_on_every_lane_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(4_000_000, requires_grad=True)
    y = kernels.dropout(x, p)
    kept = (y != 0).float()
    # the mask is 16-bit integers cut from 64-bit draws: each of the four positions in a draw must be uniform
    for lane in kept.view(-1, 4).T:
        assert float(lane.mean()) == pytest.approx(1 - p, abs=0.0015)
    values = torch.unique(y.detach()).tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / (1 - p), rel=1e-4)]
    assert float(y.detach().mean()) == pytest.approx(1.0, abs=0.002)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # the gradient is the same mask, the same scale


def test_dropout_follows_the_seed_and_keeps_the_shape_and_dtype() -> None:
    x = torch.randn(3, 5, 7).bfloat16()
    torch.manual_seed(1)
    a = kernels.dropout(x, 0.3)
    torch.manual_seed(1)
    b = kernels.dropout(x, 0.3)
    torch.manual_seed(2)
    c = kernels.dropout(x, 0.3)
    assert a.shape == x.shape and a.dtype == torch.bfloat16
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_applies_its_mask_in_one_pass_with_the_numbers_of_two(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    x = torch.randn(6, 40, 33).to(dtype).transpose(0, 1)  # not contiguous, as attention's views are
    keep, scale = kernels.keep_mask(x.shape, 0.1)
    y = kernels._apply(x, keep, scale)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, torch.mul(x, keep).mul_(scale))  # bit for bit what multiplying twice gives
    assert 0 < int((y == 0).sum()) < y.numel()


def test_dropout_is_the_identity_where_it_should_be() -> None:
    x = torch.randn(100)
    assert torch.equal(kernels.dropout(x, 0.5, training=False), x)
    assert torch.equal(kernels.dropout(x, 0.0), x)
    torch.testing.assert_close(kernels.dropout(x, 1e-7), x)  # below the mask's resolution: the native path


def _in_another_thread(call: Callable[[], torch.Tensor]) -> torch.Tensor:
    out: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: out.append(call()))
    worker.start()
    worker.join()
    return out[0]


def test_fast_dropout_reaches_modules_and_functional_calls_of_its_thread_inside_the_block_only() -> None:
    layer = torch.nn.Dropout(0.25).train()
    x = torch.ones(10_000)
    native = torch.nn.functional.dropout
    native_scale = float(native(x, 0.25).max())
    with kernels.fast_dropout(torch.device("cpu")):
        torch.manual_seed(3)
        inside = layer(x)
        torch.manual_seed(3)
        functional = torch.nn.functional.dropout(x, p=0.25, training=True)
        with kernels.fast_dropout(torch.device("cpu")):  # a block within a block changes nothing
            pass
        other = _in_another_thread(lambda: layer(x))
    torch.manual_seed(3)
    assert torch.equal(inside, kernels.dropout(x, 0.25)) and torch.equal(functional, inside)
    assert set(other.unique().tolist()) == {0.0, native_scale}  # another thread: torch's own mask
    assert torch.nn.functional.dropout is native
    torch.manual_seed(3)
    assert not torch.equal(layer(x), inside)  # outside the block: torch's own mask
    with pytest.raises(RuntimeError), kernels.fast_dropout(torch.device("cpu")):
        raise RuntimeError("a step failed")
    assert torch.nn.functional.dropout is native
    with kernels.fast_dropout(torch.device("cuda")):  # other devices keep torch's own
        assert torch.nn.functional.dropout is native


def test_fast_dropout_blocks_of_two_threads_overlap_and_put_torchs_function_back() -> None:
    native = torch.nn.functional.dropout
    entered, release = threading.Event(), threading.Event()

    def training_thread() -> None:
        with kernels.fast_dropout(torch.device("cpu")):
            entered.set()
            release.wait(timeout=30)

    worker = threading.Thread(target=training_thread)
    worker.start()
    entered.wait(timeout=30)
    with kernels.fast_dropout(torch.device("cpu")):
        pass  # this block ends first: the other thread's is still under way
    assert torch.nn.functional.dropout is not native
    release.set()
    worker.join()
    assert torch.nn.functional.dropout is native


def test_fast_dropout_computes_what_the_swapped_function_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """Routing the calls through a torch function mode changes no number: a model's forward and backward in the
    block equal those with torch.nn.functional.dropout replaced by kernels.dropout, as it was before."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.1), torch.nn.GELU(),
                                torch.nn.Linear(32, 4)).train()
    x = torch.randn(64, 16)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        h = torch.nn.functional.dropout(model(x), p=0.3, training=True)  # as eager attention calls it
        h.square().sum().backward()
        return h.detach(), model[0].weight.grad.clone()  # type: ignore[union-attr]

    with kernels.fast_dropout(torch.device("cpu")):
        routed = run()
    monkeypatch.setattr(torch.nn.functional, "dropout", kernels.dropout)
    swapped = run()
    assert torch.equal(routed[0], swapped[0]) and torch.equal(routed[1], swapped[1])


def test_disabled_kernels_leave_dropout_and_the_allocator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "enabled", False)
    monkeypatch.setattr(kernels, "_set_thresholds", lambda: pytest.fail("mallopt called"))
    assert kernels.keep_freed_memory() is False
    layer = torch.nn.Dropout(0.25).train()
    x = torch.ones(1000)
    torch.manual_seed(3)
    with kernels.fast_dropout(torch.device("cpu")):
        inside = layer(x)
    torch.manual_seed(3)
    assert torch.equal(inside, layer(x))  # torch's own mask


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | None,
               scale: float) -> torch.Tensor:
    """Eager attention, every intermediate kept by autograd."""
    probs = torch.softmax(q @ k.transpose(-1, -2) * q.size(-1) ** -0.5 + mask, dim=-1)
    if keep is not None:
        probs = probs * keep * scale
    return (probs @ v).transpose(1, 2)


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_attention_recomputing_its_backward_matches_eager_attention(p: float) -> None:
    """Outputs and the gradients of q, k and v, with padding and with dropout (the same keep decisions, drawn
    from the same seed)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(3, 1, 7, 7, dtype=torch.float64)
    mask[0, :, :, 5:] = torch.finfo(torch.float64).min  # the first row's last two tokens are padding
    module = torch.nn.Module().train()
    torch.manual_seed(1)
    out, weights = kernels.attention(module, q, k, v, mask, dropout=p)
    torch.manual_seed(1)
    keep, scale = kernels.keep_mask((3, 2, 7, 7), p) if p else (None, 1.0)
    expected = _reference(q, k, v, mask, keep, scale)
    torch.testing.assert_close(out, expected)
    assert weights is None
    upstream = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), upstream)
    want = torch.autograd.grad(expected, (q, k, v), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.autograd.gradcheck(lambda q, k, v: kernels._Attention.apply(q, k, v, mask, 0.3, 0.0), (q, k, v))


def test_attention_in_bf16_autocast_stays_close_to_fp32_and_drops_nothing_in_eval() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    mask = torch.zeros(2, 1, 9, 9)
    module = torch.nn.Module().eval()
    exact, _ = kernels.attention(module, q, k, v, mask, dropout=0.5)  # eval: no dropout
    torch.testing.assert_close(exact, _reference(q, k, v, mask, None, 1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = kernels.attention(module, q, k, v, mask, dropout=0.5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, atol=0.05, rtol=0.05)


def test_freed_memory_goes_back_to_the_kernel_once_an_epoch_even_where_the_process_keeps_it() -> None:
    # in a process of its own: the allocator setting, once made, holds for the rest of the process
    script = """
import ctypes
from pathlib import Path
from textfit.training import kernels

def rss_mb():
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

assert kernels.keep_freed_memory()
blocks = [ctypes.create_string_buffer(1 << 20) for _ in range(300)]  # 300 MB on the heap, every page touched
del blocks[:-1]  # the last one keeps the heap's top in use: only an explicit trim can give the rest back
before = rss_mb()
assert kernels.release_freed_memory()
print(before - rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 250  # MB handed back


def test_disabled_kernels_leave_freed_memory_resident(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "enabled", False)
    assert kernels.release_freed_memory() is False
