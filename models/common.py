"""Pieces every attention kind shares: RMSNorm, RoPE, static cache buffers, the prefill attention call.

Conventions (kvplan/kinds/base.py docstring): a query at 0-based position i attends keys
max(0, i - window + 1)..i; in a chunked layer (kvplan.model.Model.chunked, Llama 4) it attends keys
C * (i // C)..i of its own chunk of C = window tokens instead. Caches are preallocated per layer with `slots`
token slots, slots = min(window, max_context) for a windowed or chunked layer, else max_context; position p
lives in slot p % slots (a ring for windowed and chunked layers, the identity otherwise). After a token at
position p is written, slot s holds a key the query may attend exactly when s <= p, for full and ring caches
alike, and when s <= p % C in a chunked layer (the slots after it still hold the previous chunk's keys, so a
chunk start clears the cache without writing it), so decode masks with one comparison (decode_limit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.dtypes import FORMATS, StorageFormat
from kvplan.units import InputError

from . import flex_prefill, triton_norm

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}


def cache_storage(kv_dtype: str | None, dtype: torch.dtype) -> tuple[torch.dtype, StorageFormat | None]:
    """(torch dtype of cache tensors, kvplan StorageFormat) for a kv dtype name; None: the model's own dtype."""
    if kv_dtype is None:
        name = next((n for n, t in TORCH_DTYPES.items() if t == dtype), None)
        return dtype, FORMATS.get(name) if name else None
    if kv_dtype not in TORCH_DTYPES:
        raise InputError(f"kv dtype {kv_dtype!r} is not implemented by kvplan.models; choose one of "
                         f"{', '.join(TORCH_DTYPES)}")
    # fp8 uses one scale per tensor (1.0 with random weights), as kvplan.dtypes describes: no per-token bytes.
    return TORCH_DTYPES[kv_dtype], FORMATS[kv_dtype]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, **factory):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if triton_norm.serves(x, self.weight):
            return triton_norm.rms_norm(x, self.weight, self.eps)
        # The norm is accumulated in fp32 without an fp32 copy of x: one output tensor, no other temporaries.
        acc = torch.promote_types(x.dtype, torch.float32)
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc) / math.sqrt(x.size(-1))
        out = x * torch.reciprocal(rms + self.eps).to(x.dtype)
        return out.mul_(self.weight)


class UnweightedRMSNorm(nn.Module):
    """torch.nn.functional.rms_norm with no weight and its default eps (the dtype's machine epsilon):
    x / sqrt(mean(x^2) + eps), the norm of T6's reference blocks (Model.block_norm "rmsnorm-unweighted")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),))


def block_norm(style: str, dim: int, **factory) -> nn.Module:
    """The norm a Model.block_norm names, over `dim` channels."""
    return RMSNorm(dim, **factory) if style == "rmsnorm" else UnweightedRMSNorm()


class Rope(nn.Module):
    """Rotary embedding tables (half-split convention) for positions 0..max_context-1, one per rotary width.

    convention (kvplan.model.Model.rope_convention): "hf" turns each pair (x1, x2) by +angle, "t6" by -angle
    (tensorgi/T6's apply_rotary_emb); the table holds the sine of the turn, so apply_rope serves both.
    """

    def __init__(self, dim: int, max_context: int, base: float = 10000.0, device=None, convention: str = "hf"):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
        angles = torch.outer(torch.arange(max_context, device=device, dtype=torch.float64), inv_freq)
        if convention == "t6":
            angles = -angles
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def at(self, positions: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [T, dim/2] for a tensor of positions, or for 0..positions-1 given an int."""
        if isinstance(positions, int):
            return self.cos[:positions], self.sin[:positions]
        return self.cos.index_select(0, positions), self.sin.index_select(0, positions)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, N, d] by per-position angles (cos, sin: [T, d/2]); one output tensor, no temporaries."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty_like(x)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
    return out


def band_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool [Tq, Tk]: True where the query at q_pos may attend the key at k_pos (causal, within the window)."""
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    return allowed


def window_chunk(window: int) -> int:
    """Queries per chunk of windowed prefill. Each chunk of C queries is handed its C + window - 1 visible keys,
    so chunks of a quarter window waste at most a quarter of the pairs (chunks of a whole window would do
    twice the work a band needs), and stay large enough (>= 64 queries) to keep the kernel busy."""
    return min(window, max(64, window // 4))


def query_pieces(T: int, step: int, window: int | None = None, attention_chunk: int | None = None):
    """(start, end, first) for pieces of at most `step` queries of a T-token prompt: queries start..end-1 see
    keys first..end-1 at most, `first` being the earliest key the piece's first query sees in its window. With
    attention_chunk a piece also ends where its chunk ends and `first` is the chunk's start, so every query of
    the piece sees each key from `first` to itself: the plain causal pattern over keys first..end-1."""
    start = 0
    while start < T:
        end = min(start + step, T)
        if attention_chunk:
            first = start - start % attention_chunk
            end = min(end, first + attention_chunk)
        else:
            first = max(0, start - window + 1) if window else 0
        yield start, end, first
        start = end


def attend_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None,
                   chunk: int | None = None, attention_chunk: int | None = None) -> torch.Tensor:
    """Causal attention over materialised q [B,H,T,dq], k [B,Hkv,T,dq], v [B,Hkv,T,dv], optionally within a
    sliding `window` and/or within fixed chunks of `attention_chunk` tokens (Llama 4's chunked layers: the
    query at i sees keys attention_chunk * (i // attention_chunk) .. i).

    Full causal attention is one scaled_dot_product_attention call (flash or memory-efficient on the GPU).
    Local attention on CUDA runs compiled FlexAttention that skips the key blocks outside the band
    (kvplan.models.flex_prefill). Elsewhere, and as the reference: chunks alone are one causal call per chunk;
    a window runs query chunks of `chunk` (default: window_chunk) against only the keys they can see, under
    a band mask, so no T x T mask or score matrix is ever built.
    """
    T = q.size(2)
    window = None if window is not None and window >= T else window
    attention_chunk = None if attention_chunk is not None and attention_chunk >= T else attention_chunk
    gqa = k.size(1) != q.size(1)
    if window is None and attention_chunk is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if flex_prefill.serves(q, v):
        return flex_prefill.attend_local(q, k, v, scale, window, attention_chunk)
    out = q.new_empty(q.shape[:-1] + (v.size(-1),))
    if window is None:  # chunks alone: each is an independent causal attention
        for start in range(0, T, attention_chunk):
            end = min(start + attention_chunk, T)
            out[:, :, start:end] = F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], is_causal=True, scale=scale,
                enable_gqa=gqa)
        return out
    chunk = chunk or window_chunk(window)
    group = q.size(1) // k.size(1)
    positions = torch.arange(T, device=q.device)
    for start, end, first in query_pieces(T, chunk, window):
        mask = flex_prefill.allowed(positions[start:end, None], positions[None, first:end], window, attention_chunk)
        k_seen, v_seen = k[:, :, first:end], v[:, :, first:end]
        if group > 1:  # masked kernels take no enable_gqa: expand only this chunk's keys
            k_seen, v_seen = k_seen.repeat_interleave(group, 1), v_seen.repeat_interleave(group, 1)
        out[:, :, start:end] = F.scaled_dot_product_attention(q[:, :, start:end], k_seen, v_seen, attn_mask=mask,
                                                              scale=scale)
    return out


def decode_mask(slots: int, input_pos: torch.Tensor) -> torch.Tensor:
    """Bool [slots]: True for slots holding a key the token at input_pos attends (see the module docstring)."""
    return torch.arange(slots, device=input_pos.device) <= input_pos


def head_block(weight: torch.Tensor, n_heads: int, first: int, count: int, dim: int = 0) -> torch.Tensor:
    """Heads first..first+count-1 of a weight whose dimension `dim` is n_heads blocks of equal width (the slice
    of it that one tensor-parallel GPU holds)."""
    return weight.unflatten(dim, (n_heads, -1)).narrow(dim, first, count).flatten(dim, dim + 1)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """fp8 tensors as raw bytes: index_copy_ has no fp8 kernels."""
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


class CacheMixin:
    """Static cache buffers of one attention layer: token slots on dimension `token_dim` of each buffer."""

    slots: int
    token_dims: dict[str, int]
    window: int | None  # sliding window in tokens (None: none)
    attention_chunk: int | None  # tokens per chunk of a chunked layer (None: not chunked)

    def set_span(self, window: int | None, chunked: bool, max_context: int) -> None:
        """The keys this layer attends (a layer window of a chunked model is its chunk) and its cache slots."""
        self.window, self.attention_chunk = (None, window) if chunked else (window, None)
        self.slots = min(window, max_context) if window else max_context

    def decode_limit(self, input_pos: torch.Tensor) -> torch.Tensor:
        """The token at input_pos attends slots 0..decode_limit: its position, or in a chunked layer its offset
        in its chunk (see the module docstring)."""
        return input_pos if self.attention_chunk is None else input_pos % self.attention_chunk

    def decode_slots(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Bool [slots]: the slots the token at input_pos attends."""
        return decode_mask(self.slots, self.decode_limit(input_pos))

    def cache_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.token_dims]

    def cache_bytes_live(self, context: int) -> int:
        """Bytes of this layer's cache (all batch rows) that hold tokens of a `context`-token sequence."""
        live = min(context, self.slots)
        return sum(buf.nbytes // self.slots * live for buf in self.cache_buffers())

    def reset_cache(self) -> None:
        for buf in self.cache_buffers():
            buf.zero_()

    def fill(self, name: str, values: torch.Tensor) -> None:
        """Prefill: write `values` for positions 0..T-1 (rows 0..B-1); a ring keeps the last `slots` of them."""
        buf, dim = getattr(self, name), self.token_dims[name]
        T = values.size(dim)
        keep = min(T, self.slots)
        slots = torch.arange(T - keep, T, device=buf.device) % self.slots
        _bits(buf[:values.size(0)]).index_copy_(dim, slots, _bits(values.narrow(dim, T - keep, keep).to(buf.dtype)))

    def write(self, name: str, values: torch.Tensor, input_pos: torch.Tensor) -> None:
        """Decode: write one token's `values` (token dim of size 1) at slot input_pos % slots, on the device."""
        buf, dim = getattr(self, name), self.token_dims[name]
        _bits(buf[:values.size(0)]).index_copy_(dim, input_pos % self.slots, _bits(values.to(buf.dtype)))

    def read(self, name: str, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows 0..batch-1 of a cache buffer, in the compute dtype (a copy only for fp8 storage)."""
        buf = getattr(self, name)[:batch]
        return buf if buf.dtype == dtype else buf.to(dtype)
