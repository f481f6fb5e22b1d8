"""Windowed and chunked causal prefill that skips the key blocks no query of a block can see: FlexAttention
(torch.nn.attention.flex_attention, compiled) under a block mask built from the band's geometry.

Two local patterns, both causal:
- sliding window W: the query at position i attends keys i - W + 1 .. i;
- chunks of C tokens (Llama 4's chunked layers): the query at i attends keys C * (i // C) .. i.
For a block of BLOCK queries only the key blocks that intersect its band are listed, so the work is
queries x (window + BLOCK) pairs, not queries x prompt. Key blocks wholly inside the band run without a
mask; those on its edges evaluate the mask per element. The block lists are computed from the block
boundaries (O(blocks^2) integer work), never from a T x T mask.

kvplan.models.common.attend_prefill serves CUDA tensors through `attend_local` and keeps its chunked
scaled_dot_product_attention path for the CPU and as the reference tests compare against.
"""

from __future__ import annotations

import torch

BLOCK = 128  # queries and keys per FlexAttention block
ENABLED = True  # False: attend_prefill takes its PyTorch path on CUDA too (for comparisons)
_COMPILED = {}  # "flex" -> the compiled flex_attention, built on first use
RECOMPILE_LIMIT = 64  # shapes compiled before dynamo would fall back to uncompiled flex_attention
_MASKS = {}  # (q_len, k_len, window, chunk, device) -> BlockMask, oldest dropped first
MASKS_KEPT = 8  # a mask holds 2 x (T / BLOCK)^2 int32 block indices: 32 MiB at 256k tokens


def allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, chunk: int | None) -> torch.Tensor:
    """Bool, broadcast of q_pos and k_pos: causal, within the window and within the same chunk of `chunk` tokens."""
    ok = k_pos <= q_pos
    if window is not None:
        ok = ok & (q_pos - k_pos < window)
    if chunk is not None:
        ok = ok & (q_pos // chunk == k_pos // chunk)
    return ok


def block_lists(q_len: int, k_len: int, window: int | None, chunk: int | None, device,
                block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [query blocks, key blocks]: some / every (query, key) pair of the block pair is allowed.

    Queries and keys hold positions 0..q_len-1 and 0..k_len-1. The allowed pairs of a block pair form a
    contiguous range of q - k (and of chunks), so both tests need only the blocks' first and last positions.
    """
    q_first = torch.arange(0, q_len, block, device=device)[:, None]
    q_last = torch.clamp(q_first + block - 1, max=q_len - 1)
    k_first = torch.arange(0, k_len, block, device=device)[None, :]
    k_last = torch.clamp(k_first + block - 1, max=k_len - 1)
    # q - k over the pair runs from q_first - k_last to q_last - k_first: some pair has 0 <= q - k < window ...
    some = q_last >= k_first
    every = q_first >= k_last
    if window is not None:
        some = some & (q_first - k_last < window)
        every = every & (q_last - k_first < window)
    if chunk is not None:
        # The lowest chunk both blocks reach: if no causal pair lies in it, none lies in a later one (the
        # smallest key there only grows while the largest query stays q_last).
        lowest = torch.maximum(q_first // chunk, k_first // chunk)
        reach = (lowest <= torch.minimum(q_last // chunk, k_last // chunk))
        some = some & reach & (torch.maximum(k_first, lowest * chunk) <= torch.minimum(q_last, (lowest + 1) * chunk - 1))
        every = every & (q_first // chunk == q_last // chunk) & (k_first // chunk == k_last // chunk) \
            & (q_first // chunk == k_first // chunk)
    return some & ~every, every


def _lists(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count [1, 1, Q], indices [1, 1, Q, K] with the flagged key blocks first) for FlexAttention."""
    counts = flags.sum(-1, dtype=torch.int32)
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[None, None], order[None, None]


def block_mask(q_len: int, k_len: int, window: int | None, chunk: int | None, device):
    """FlexAttention BlockMask of the local pattern for queries 0..q_len-1 against keys 0..k_len-1."""
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = block_lists(q_len, k_len, window, chunk, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_idx, kv_idx, window, chunk)

    return BlockMask.from_kv_blocks(*_lists(partial), *_lists(full), BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(q_len, k_len))


def cached_block_mask(q_len: int, k_len: int, window: int | None, chunk: int | None, device):
    """block_mask, built once per pattern: every local layer of a forward, and every forward of the same prompt
    length, attends under the same mask (its block lists are a few small kernels and a sort)."""
    key = (q_len, k_len, window, chunk, str(device))
    if key not in _MASKS:
        if len(_MASKS) >= MASKS_KEPT:
            _MASKS.pop(next(iter(_MASKS)))
        _MASKS[key] = block_mask(q_len, k_len, window, chunk, device)
    return _MASKS[key]


def serves(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the compiled FlexAttention path takes this call: enabled, CUDA tensors, head widths of a power of
    two in 16..256 (what its kernel tiles), and no dispatch mode (FlopCounterMode would count the kernel's
    block rectangles, not the reference's pairs)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    def tile(n: int) -> bool:
        return 16 <= n <= 256 and n & (n - 1) == 0

    return (ENABLED and q.is_cuda and tile(q.size(-1)) and tile(v.size(-1))
            and _get_current_dispatch_mode() is None)


def attend_local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None,
                 chunk: int | None) -> torch.Tensor:
    """Causal attention of q [B, H, T, dq] over k [B, Hkv, T, dq], v [B, Hkv, T, dv] under a window and/or
    chunks, through compiled FlexAttention with the block mask above. Returns [B, H, T, dv]."""
    if "flex" not in _COMPILED:
        import torch._dynamo.config as dynamo_config
        from torch.nn.attention.flex_attention import flex_attention

        # Each (batch, prompt, heads, window, chunk) compiles once. Past dynamo's recompile limit (8 by default)
        # a call would run flex_attention uncompiled, which builds the whole T x T score matrix; a profiling
        # sweep over batches, contexts and windows passes 8.
        if hasattr(dynamo_config, "recompile_limit"):
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    mask = cached_block_mask(q.size(2), k.size(2), window, chunk, q.device)
    return _COMPILED["flex"](q, k, v, block_mask=mask, scale=scale, enable_gqa=k.size(1) != q.size(1))
