"""DeepSeek Multi-head Latent Attention: caches the normed latent c_KV and the shared rotated RoPE key.

One cache tensor [B, slots, kv_lora_rank + qk_rope_head_dim] holds both, so the absorbed form scores a
query against a cached token with one dot product. Prefill decompresses the latent into per-head K and V
and calls scaled_dot_product_attention (kvplan.kinds' "prefill" convention); decode folds W_UK into
the query and W_UV into the output (the absorbed form), so K and V are never rebuilt per step. On a GPU with
Triton the absorbed attention is one split-KV kernel (kvplan.models.triton_decode.mla_decode) that reads
each cached row once for a block of heads; latent_attention below is the reference and the fallback.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kvplan.kinds import MLA

from . import triton_decode
from .common import CacheMixin, RMSNorm, Rope, apply_rope, attend_prefill, head_block


def latent_attention(q_cat: torch.Tensor, keys: torch.Tensor, kv_lora_rank: int, allowed: torch.Tensor) -> torch.Tensor:
    """Absorbed (MQA-form) attention: q_cat [..., h, L+R] (scaled) against keys [..., S, L+R]; the values are
    the latent part keys[..., :L]. `allowed` broadcasts against the scores [..., h, S]. Returns [..., h, L]."""
    scores = torch.matmul(q_cat, keys.transpose(-1, -2))
    scores.masked_fill_(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), keys[..., :kv_lora_rank])


class MLALayer(nn.Module, CacheMixin):
    def __init__(self, spec: MLA, d_model: int, window: int | None, max_batch: int, max_context: int,
                 rope: Rope, cache_dtype: torch.dtype, chunked: bool = False, **factory):
        super().__init__()
        self.spec, self.rope = spec, rope
        h = spec.n_heads
        if spec.q_lora_rank:
            self.wq_a = nn.Linear(d_model, spec.q_lora_rank, bias=False, **factory)
            self.q_norm = RMSNorm(spec.q_lora_rank, **factory)
            self.wq_b = nn.Linear(spec.q_lora_rank, h * spec.qk_head_dim, bias=False, **factory)
        else:
            self.wq = nn.Linear(d_model, h * spec.qk_head_dim, bias=False, **factory)
        self.wkv_a = nn.Linear(d_model, spec.kv_lora_rank + spec.qk_rope_head_dim, bias=False, **factory)
        self.kv_norm = RMSNorm(spec.kv_lora_rank, **factory)
        self.wkv_b = nn.Linear(spec.kv_lora_rank, h * (spec.qk_nope_head_dim + spec.v_head_dim), bias=False, **factory)
        self.wo = nn.Linear(h * spec.v_head_dim, d_model, bias=False, **factory)
        self.scale = 1.0 / math.sqrt(spec.qk_head_dim)
        self.set_span(window, chunked, max_context)
        width = spec.kv_lora_rank + spec.qk_rope_head_dim
        self.register_buffer("kv_cache", torch.zeros(max_batch, self.slots, width, dtype=cache_dtype,
                                                     device=factory.get("device")), persistent=False)
        self.token_dims = {"kv_cache": 1}

    # W_UK [h, nope, L] and W_UV [h, v, L]: views of wkv_b's weight, used by the absorbed form.
    def _w_uk_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        w = self.wkv_b.weight.view(s.n_heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        return w[:, :s.qk_nope_head_dim], w[:, s.qk_nope_head_dim:]

    def _query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The query through its low-rank path: its latent (None without q_lora) and q [B, T, h, qk_head_dim]."""
        B, T, _ = x.shape
        if self.spec.q_lora_rank:
            q_latent = self.q_norm(self.wq_a(x))
            return q_latent, self.wq_b(q_latent).view(B, T, self.spec.n_heads, -1)
        return None, self.wq(x).view(B, T, self.spec.n_heads, -1)

    def _latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """What is cached per token: [normed c_KV, rotated k_rope], [B, T, L + R]."""
        L = self.spec.kv_lora_rank
        kv = self.wkv_a(x)
        out = torch.empty_like(kv)
        out[..., :L] = self.kv_norm(kv[..., :L])
        out[..., L:] = apply_rope(kv[..., L:].unsqueeze(2), cos, sin).squeeze(2)
        return out

    def _write_latent(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, input_pos: torch.Tensor) -> None:
        """Decode: the token's cache row (_latent) written at its slot; on the GPU in one kernel after wkv_a."""
        norm = self.kv_norm.weight
        if triton_decode.enabled(x) and self.kv_cache.dtype == x.dtype == norm.dtype:
            triton_decode.mla_latent_write(self.wkv_a(x)[:, 0], norm, self.kv_norm.eps, cos, sin,
                                           self.kv_cache, input_pos)
        else:
            self.write("kv_cache", self._latent(x, cos, sin), input_pos)

    def _absorbed_query(self, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """q [B, T, h, qk] -> [q_nope W_UK, rotated q_rope] * scale, [B, T, h, L + R]."""
        s = self.spec
        w_uk, _ = self._w_uk_uv()
        B, T, h, _ = q.shape
        q = q.reshape(B * T, h, -1)
        q_cat = q.new_empty(B * T, h, s.kv_lora_rank + s.qk_rope_head_dim)
        # [h, B*T, nope] @ [h, nope, L] x scale, one batched product per head, written straight into q_cat's first
        # L columns (cuBLAS takes their row stride) and scaled before its one rounding.
        absorbed = q_cat[..., :s.kv_lora_rank].transpose(0, 1)
        torch.baddbmm(absorbed, q[..., :s.qk_nope_head_dim].transpose(0, 1), w_uk, beta=0, alpha=self.scale,
                      out=absorbed)
        if triton_decode.enabled(q):  # the rotation and scale in one kernel
            triton_decode.mla_query_rope(q, cos, sin, self.scale, q_cat)
        else:
            q_cat[..., s.kv_lora_rank:] = apply_rope(q[..., s.qk_nope_head_dim:].view(B, T, h, -1), cos,
                                                     sin).view(B * T, h, -1)
            q_cat[..., s.kv_lora_rank:].mul_(self.scale)
        return q_cat.view(B, T, h, -1)

    def _absorbed_output(self, o_latent: torch.Tensor) -> torch.Tensor:
        """o_latent [B, T, h, L] -> W_UV per head -> output projection, [B, T, d_model]."""
        B, T, h, L = o_latent.shape
        _, w_uv = self._w_uk_uv()
        out = o_latent.new_empty(B * T, h, w_uv.size(1))
        # [h, B*T, L] @ [h, L, v] written as [B*T, h, v] (cuBLAS takes the row stride): wo reads it as it lies.
        torch.bmm(o_latent.reshape(B * T, h, L).transpose(0, 1), w_uv.transpose(1, 2), out=out.transpose(0, 1))
        return self.wo(out.view(B, T, -1))

    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        s = self.spec
        B, T, _ = x.shape
        cos, sin = self.rope.at(T)
        latent = self._latent(x, cos, sin)
        if write_cache:
            self.fill("kv_cache", latent)
        _, q = self._query(x)
        q_nope, q_rope = q.split((s.qk_nope_head_dim, s.qk_rope_head_dim), dim=-1)
        q = torch.cat([q_nope, apply_rope(q_rope, cos, sin)], dim=-1)
        del q_nope, q_rope  # the unrotated projection
        # Decompress: per-head K = [k_nope, shared k_rope], V.
        kv = self.wkv_b(latent[..., :s.kv_lora_rank]).view(B, T, s.n_heads, -1)
        k_nope, v = kv.split((s.qk_nope_head_dim, s.v_head_dim), dim=-1)
        k_rope = latent[..., s.kv_lora_rank:].unsqueeze(2).expand(B, T, s.n_heads, s.qk_rope_head_dim)
        k = torch.cat([k_nope, k_rope], dim=-1)
        del kv, k_nope, k_rope, latent
        out = attend_prefill(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.scale, self.window,
                             attention_chunk=self.attention_chunk)
        del q, k, v
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        cos, sin = self.rope.at(input_pos)
        self._write_latent(x, cos, sin, input_pos)
        _, q = self._query(x)
        q_cat = self._absorbed_query(q, cos, sin)[:, 0]  # [B, h, L + R]
        if triton_decode.enabled(x) and self.kv_cache.dtype == x.dtype:
            o_latent = triton_decode.mla_decode(q_cat, self.kv_cache[:B], self.decode_limit(input_pos),
                                                self.spec.kv_lora_rank)
        else:
            keys = self.read("kv_cache", B, x.dtype)  # [B, slots, L + R]
            o_latent = latent_attention(q_cat, keys, self.spec.kv_lora_rank, self.decode_slots(input_pos))
        return self._absorbed_output(o_latent.unsqueeze(1))

    @classmethod
    def shard_state(cls, spec: MLA, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
        """Rank `rank`'s weights of `tp` from the full layer's state_dict: its n_heads/tp heads' rows of the
        query and key/value up-projections and columns of wo; the down-projections to the latents (wq_a,
        wkv_a) and their norms, which every head reads, whole."""
        n = spec.n_heads
        h = n // tp
        first = rank * h
        out = dict(state)
        for name in ("wq.weight", "wq_b.weight", "wkv_b.weight"):  # wq without q_lora, wq_b with it
            if name in state:
                out[name] = head_block(state[name], n, first, h)
        out["wo.weight"] = head_block(state["wo.weight"], n, first, h, dim=1)
        return out
