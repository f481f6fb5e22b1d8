"""MHA / GQA / MQA: per-head K and V cached, [B, kv_heads, slots, head_dim] each.

Decode runs kvplan.models.triton_decode.dense_decode on the GPU (one pass over the cache, no score tensor in
memory); the PyTorch path below it is the reference the kernel is tested against and what runs elsewhere."""

from __future__ import annotations

import math

import torch
from torch import nn

from kvplan.kinds import DenseAttention
from kvplan.units import ceil_div

from . import triton_decode
from .common import CacheMixin, Rope, apply_rope, attend_prefill, head_block


class DenseAttentionLayer(nn.Module, CacheMixin):
    def __init__(self, spec: DenseAttention, d_model: int, window: int | None, max_batch: int, max_context: int,
                 rope: Rope, cache_dtype: torch.dtype, chunked: bool = False, **factory):
        super().__init__()
        self.spec, self.rope = spec, rope
        h, kv, d_h = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.wqkv = nn.Linear(d_model, (h + 2 * kv) * d_h, bias=spec.qkv_bias, **factory)
        self.wo = nn.Linear(h * d_h, d_model, bias=False, **factory)
        self.w_gate = nn.Linear(d_model, h * d_h, bias=False, **factory) if spec.output_gate else None
        self.scale = 1.0 / math.sqrt(d_h)
        self.set_span(window, chunked, max_context)
        shape = (max_batch, kv, self.slots, d_h)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=cache_dtype, device=factory.get("device")),
                             persistent=False)
        self.register_buffer("v_cache", torch.zeros_like(self.k_cache), persistent=False)
        self.token_dims = {"k_cache": 2, "v_cache": 2}

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q [B,T,h,d], k [B,T,kv,d] (both rotated) and v [B,T,kv,d] (a view of the projection)."""
        B, T, _ = x.shape
        h, kv, d_h = self.spec.n_heads, self.spec.n_kv_heads, self.spec.head_dim
        q, k, v = self.wqkv(x).view(B, T, h + 2 * kv, d_h).split((h, kv, kv), dim=2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The output projection of out [B, T, h * d_h], gated by sigmoid(w_gate x) where the kind has an output
        gate."""
        if self.w_gate is not None:
            out = out * torch.sigmoid(self.w_gate(x))
        return self.wo(out)

    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._project(x, *self.rope.at(T))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, d_h] views
        if write_cache:
            self.fill("k_cache", k)
            self.fill("v_cache", v)
        out = attend_prefill(q, k, v, self.scale, self.window, attention_chunk=self.attention_chunk)
        del q, k, v  # free the projections before the output projection
        return self._output(x, out.transpose(1, 2).reshape(B, T, -1))

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        h, kv, d_h = self.spec.n_heads, self.spec.n_kv_heads, self.spec.head_dim
        q, k, v = self._project(x, *self.rope.at(input_pos))
        self.write("k_cache", k.transpose(1, 2), input_pos)
        self.write("v_cache", v.transpose(1, 2), input_pos)
        if triton_decode.enabled(x) and self.k_cache.dtype == x.dtype:
            out = triton_decode.dense_decode(q.view(B, h, d_h), self.k_cache[:B], self.v_cache[:B],
                                             self.decode_limit(input_pos), self.scale)
            return self._output(x, out.reshape(B, 1, h * d_h))
        keys, values = self.read("k_cache", B, x.dtype), self.read("v_cache", B, x.dtype)
        # Each KV head serves its group of query heads as the rows of one matrix product over the cache.
        q = (q.view(B, kv, h // kv, d_h) * self.scale)
        scores = torch.matmul(q, keys.transpose(-1, -2))  # [B, kv, group, slots]
        scores.masked_fill_(~self.decode_slots(input_pos), float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values)  # [B, kv, group, d_h]
        return self._output(x, out.reshape(B, 1, h * d_h))

    @classmethod
    def shard_state(cls, spec: DenseAttention, state: dict[str, torch.Tensor], tp: int, rank: int
                    ) -> dict[str, torch.Tensor]:
        """Rank `rank`'s weights of `tp` from the full layer's state_dict: its n_heads/tp query heads (rows of
        wqkv, columns of wo) and the ceil(n_kv_heads/tp) KV heads they read, one KV head on several ranks
        when tp > n_kv_heads."""
        n, kv, d = spec.n_heads, spec.n_kv_heads, spec.head_dim
        h, kv_here = n // tp, ceil_div(kv, tp)
        first = rank * h
        kv_first = first // (n // kv)  # the KV head of this rank's first query head
        out = dict(state)
        for name in [k for k in state if k.startswith("wqkv.")]:  # weight, and bias where qkv_bias
            q, k, v = state[name].split((n * d, kv * d, kv * d), dim=0)
            out[name] = torch.cat([head_block(q, n, first, h), head_block(k, kv, kv_first, kv_here),
                                   head_block(v, kv, kv_first, kv_here)])
        out["wo.weight"] = head_block(state["wo.weight"], n, first, h, dim=1)
        if "w_gate.weight" in state:
            out["w_gate.weight"] = head_block(state["w_gate.weight"], n, first, h)
        return out
