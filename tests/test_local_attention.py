"""Local (windowed, chunked) causal prefill: the block lists of kvplan.models.flex_prefill against a brute-force
count of each block pair's allowed pairs, the PyTorch reference of attend_prefill against one dense mask,
FlexAttention under the block mask (eager on the CPU, compiled on a GPU) against that reference."""

import pytest
import torch
import torch.nn.functional as F

from kvplan.models import flex_prefill
from kvplan.models.common import attend_prefill

# (prompt, window, chunk, block): windows and chunks shorter and longer than a block, both at once, a chunk
# that is no multiple of the block, and a prompt that is no multiple of the block.
PATTERNS = [(300, 50, None, 16), (300, None, 64, 16), (300, 40, 100, 16), (257, 7, 13, 8), (64, None, 5, 4),
            (96, 200, None, 32)]


def _dense(T, window, chunk):
    """Bool [T, T] from the definition: 0 <= i - j (< window) and i, j in the same chunk of `chunk` tokens."""
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = j <= i
    if window is not None:
        ok &= i - j < window
    if chunk is not None:
        ok &= torch.div(i, chunk, rounding_mode="floor") == torch.div(j, chunk, rounding_mode="floor")
    return ok


@pytest.mark.parametrize("T, window, chunk, block", PATTERNS)
def test_block_lists_equal_a_brute_force_count(T, window, chunk, block):
    n = -(-T // block)
    padded = torch.zeros(n * block, n * block, dtype=torch.bool)
    padded[:T, :T] = _dense(T, window, chunk)
    inside = torch.zeros_like(padded)
    inside[:T, :T] = True
    pairs = padded.view(n, block, n, block).transpose(1, 2)  # [query block, key block, block, block]
    some = pairs.any(-1).any(-1)
    every = (pairs | ~inside.view(n, block, n, block).transpose(1, 2)).all(-1).all(-1) & some
    partial, full = flex_prefill.block_lists(T, T, window, chunk, "cpu", block)
    assert torch.equal(full, every)
    assert torch.equal(partial, some & ~every)


def _qkv(B, H, kv_heads, T, d, dtype=torch.float64, device="cpu", seed=3):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(B, h, T, d, dtype=dtype, device=device, generator=g) for h in (H, kv_heads, kv_heads)]


@pytest.mark.parametrize("window, chunk", [(None, 5), (None, 16), (4, 6), (9, 4)])
def test_chunked_reference_equals_one_dense_mask(window, chunk):
    B, H, kv_heads, T, d = 2, 4, 2, 37, 8
    q, k, v = _qkv(B, H, kv_heads, T, d)
    rep = H // kv_heads
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                              attn_mask=_dense(T, window, chunk), scale=0.3)
    torch.testing.assert_close(attend_prefill(q, k, v, 0.3, window, attention_chunk=chunk), expected)


@pytest.mark.parametrize("window, chunk", [(50, None), (None, 64), (40, 100), (200, None)])
def test_flex_under_the_block_mask_equals_the_reference(window, chunk):
    """Eager FlexAttention on the CPU: the block lists and the mask applied to the partial blocks."""
    from torch.nn.attention.flex_attention import flex_attention

    B, H, kv_heads, T, d = 1, 4, 2, 300, 16
    q, k, v = _qkv(B, H, kv_heads, T, d, dtype=torch.float32)
    mask = flex_prefill.block_mask(T, T, window, chunk, "cpu")
    got = flex_attention(q, k, v, block_mask=mask, scale=0.3, enable_gqa=True)
    expected = attend_prefill(q, k, v, 0.3, window, attention_chunk=chunk)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("window, chunk, kv_heads, T", [(512, None, 2, 2048), (100, None, 4, 1000),
                                                        (None, 384, 1, 1500), (256, 1024, 2, 2048)])
def test_compiled_flex_on_the_gpu_equals_the_reference(window, chunk, kv_heads, T, monkeypatch):
    q, k, v = _qkv(2, 4, kv_heads, T, 128, dtype=torch.bfloat16, device="cuda")
    assert flex_prefill.serves(q, v)
    got = attend_prefill(q, k, v, 0.1, window, attention_chunk=chunk)
    monkeypatch.setattr(flex_prefill, "ENABLED", False)
    expected = attend_prefill(q, k, v, 0.1, window, attention_chunk=chunk)
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)


def test_block_masks_are_built_once_per_pattern(monkeypatch):
    monkeypatch.setattr(flex_prefill, "_MASKS", {})
    first = flex_prefill.cached_block_mask(300, 300, 50, None, "cpu")
    assert flex_prefill.cached_block_mask(300, 300, 50, None, "cpu") is first
    assert flex_prefill.cached_block_mask(300, 300, 60, None, "cpu") is not first
    for window in range(1, flex_prefill.MASKS_KEPT + 1):  # the oldest pattern is dropped past MASKS_KEPT
        flex_prefill.cached_block_mask(300, 300, 100 + window, None, "cpu")
    assert len(flex_prefill._MASKS) == flex_prefill.MASKS_KEPT
    assert (300, 300, 50, None, "cpu") not in flex_prefill._MASKS
