"""Tensor Product Attention (T6, arXiv 2501.06425): Q, K, V per token as (1/R) sum_r a_r (heads) x b_r (head_dim).

One projection gives every factor: A_Q, A_K, A_V (rank x heads) and B_Q, B_K, B_V (rank x head_dim); RoPE
rotates the B factors of Q and K. The cache holds A_K, A_V token-last ([B, R, h, slots]) and B_K, B_V as
produced ([B, slots, R, d_h]); the 1/R scaling is applied where the factors are contracted. A is stored
token-last because h is often odd (47 in T6-medium): a token's R x h row is then not 16-byte aligned and a
decode kernel reading it per token falls back to 2-byte loads, while each (rank, head) row over a block of
tokens is one contiguous, aligned run. Prefill rebuilds Q, K, V
and calls scaled_dot_product_attention; decode contracts the query with the cached factors directly:
  score[h, s] = (1/R_K) sum_r A_K[s, r, h] (q[h] . B_K[s, r]),  out[h] = (1/R_V) sum_{s, r} p[h, s] A_V[s, r, h] B_V[s, r],
in the order TPA.decode_order picks by shape: "rebuild" forms q[h] = (1/R_Q) sum_j A_Q[j, h] B_Q[j] first;
"flash" (FlashTPA, tensorgi/T6 decode/flashtpa_decode_torch.py) dots B_Q[j] . B_K[s, r] once for all heads and
mixes the R_Q x R_K products into each head with A_Q: q[h] . B_K[s, r] = (1/R_Q) sum_j A_Q[j, h] (B_Q[j] . B_K[s, r]).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kvplan.kinds import TPA

from . import triton_decode
from .common import CacheMixin, Rope, apply_rope, attend_prefill, head_block


def rebuild(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1/R) sum_r a_r x b_r: a [..., R, h], b [..., R, d_h] -> [..., h, d_h]."""
    return torch.matmul(a.transpose(-1, -2), b).mul_(1.0 / a.size(-2))


class TPALayer(nn.Module, CacheMixin):
    def __init__(self, spec: TPA, d_model: int, window: int | None, max_batch: int, max_context: int,
                 rope: Rope, cache_dtype: torch.dtype, chunked: bool = False, **factory):
        super().__init__()
        self.spec, self.rope = spec, rope
        h, d_h = spec.n_heads, spec.head_dim
        ranks = (spec.q_rank, spec.k_rank, spec.v_rank)
        # Output columns: A_Q, A_K, A_V (rank x h each), then B_Q, B_K, B_V (rank x d_h each).
        self.w_factors = nn.Linear(d_model, sum(ranks) * (h + d_h), bias=False, **factory)
        self.wo = nn.Linear(h * d_h, d_model, bias=False, **factory)
        self.scale = 1.0 / math.sqrt(d_h)
        self.decode_order = spec.decode_order  # "flash" or "rebuild"; settable, to time one against the other
        self.set_span(window, chunked, max_context)
        device = factory.get("device")
        for name, shape in (("a_k", (spec.k_rank, h, self.slots)), ("b_k", (self.slots, spec.k_rank, d_h)),
                            ("a_v", (spec.v_rank, h, self.slots)), ("b_v", (self.slots, spec.v_rank, d_h))):
            self.register_buffer(name, torch.zeros(max_batch, *shape, dtype=cache_dtype, device=device), persistent=False)
        self.token_dims = {"a_k": 3, "b_k": 1, "a_v": 3, "b_v": 1}

    def _store(self, f: dict[str, torch.Tensor], input_pos: torch.Tensor | None = None) -> None:
        """Write the K and V factors of f (tokens on dim 1) into the cache: all of them (prefill) or one at input_pos."""
        for name in ("a_k", "b_k", "a_v", "b_v"):
            values = f[name].permute(0, 2, 3, 1) if name.startswith("a") else f[name]  # A token-last
            if input_pos is None:
                self.fill(name, values)
            else:
                self.write(name, values, input_pos)

    def _factors(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict[str, torch.Tensor]:
        """a_q, a_k, a_v [B, T, R, h] (views of the projection) and b_q, b_k (rotated), b_v [B, T, R, d_h]."""
        s = self.spec
        B, T, _ = x.shape
        ranks = (s.q_rank, s.k_rank, s.v_rank)
        a_all, b_all = self.w_factors(x).split((sum(ranks) * s.n_heads, sum(ranks) * s.head_dim), dim=-1)
        a_q, a_k, a_v = a_all.view(B, T, sum(ranks), s.n_heads).split(ranks, dim=2)
        b_q, b_k, b_v = b_all.view(B, T, sum(ranks), s.head_dim).split(ranks, dim=2)
        return dict(a_q=a_q, a_k=a_k, a_v=a_v, b_q=apply_rope(b_q, cos, sin), b_k=apply_rope(b_k, cos, sin), b_v=b_v)

    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        B, T, _ = x.shape
        f = self._factors(x, *self.rope.at(T))
        if write_cache:
            self._store(f)
        q, k, v = (rebuild(f["a_" + n], f["b_" + n]).transpose(1, 2) for n in "qkv")  # [B, h, T, d_h]
        del f
        out = attend_prefill(q, k, v, self.scale, self.window, attention_chunk=self.attention_chunk)
        del q, k, v
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        s = self.spec
        B, h, d_h = x.size(0), s.n_heads, s.head_dim
        f = self._factors(x, *self.rope.at(input_pos))
        self._store(f, input_pos)
        kernel = triton_decode.enabled(x) and self.a_k.dtype == x.dtype
        limit = self.decode_limit(input_pos)  # the kernels attend slots 0..limit
        caches = (self.a_k[:B], self.b_k[:B], self.a_v[:B], self.b_v[:B])
        if self.decode_order == "flash":
            # A_Q carries 1/R_Q and the softmax scale / R_K: [B, h, R_Q]; B_Q [B, R_Q, d_h].
            a_q = f["a_q"][:, 0].transpose(1, 2) * (self.scale / (s.q_rank * s.k_rank))
            b_q = f["b_q"][:, 0]
            out = (triton_decode.tpa_decode(a_q, *caches, limit, b_q=b_q) if kernel
                   else self._attend_flash(a_q, b_q, input_pos))
        else:
            q = rebuild(f["a_q"], f["b_q"])[:, 0] * (self.scale / s.k_rank)  # [B, h, d_h]
            out = triton_decode.tpa_decode(q, *caches, limit) if kernel else self._attend_factors(q, input_pos)
        return self.wo(out.mul_(1.0 / s.v_rank).reshape(B, 1, h * d_h))

    def _attend_factors(self, q: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The factorized attention in PyTorch, rebuild order: q [B, h, d_h] (scaled by softmax scale / R_K) ->
        [B, h, d_h] (before the 1/R_V scaling)."""
        s = self.spec
        B, h, d_h = q.shape
        b_k = self.read("b_k", B, q.dtype)
        # q . B_K for every (slot, rank): [B, h, d_h] @ [B, d_h, slots * R_K].
        qb = torch.matmul(q, b_k.view(B, self.slots * s.k_rank, d_h).transpose(1, 2))
        return self._weigh_and_attend(qb.view(B, h, self.slots, s.k_rank), input_pos)

    def _attend_flash(self, a_q: torch.Tensor, b_q: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The factorized attention in PyTorch, FlashTPA order: a_q [B, h, R_Q] (scaled by softmax scale /
        (R_Q R_K)), b_q [B, R_Q, d_h] -> [B, h, d_h] (before the 1/R_V scaling)."""
        s = self.spec
        B, h, r_q = a_q.shape
        b_k = self.read("b_k", B, a_q.dtype)
        # B_Q . B_K for every (slot, K rank, Q rank), once for all heads: [B, slots * R_K, d_h] @ [B, d_h, R_Q].
        products = torch.matmul(b_k.view(B, self.slots * s.k_rank, s.head_dim), b_q.transpose(1, 2))
        # Mixed into each head by A_Q: [B, h, R_Q] @ [B, R_Q, slots * R_K] = q . B_K as in the rebuild order.
        qb = torch.matmul(a_q, products.transpose(1, 2))
        return self._weigh_and_attend(qb.view(B, h, self.slots, s.k_rank), input_pos)

    def _weigh_and_attend(self, qb: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """qb [B, h, slots, R_K] (q . B_K per cached key and rank) -> scores weighted by A_K over the ranks,
        masked softmax, then P weighted by A_V and contracted with B_V: [B, h, d_h] (before the 1/R_V scaling)."""
        s = self.spec
        B, h = qb.shape[:2]
        a_k, a_v, b_v = (self.read(n, B, qb.dtype) for n in ("a_k", "a_v", "b_v"))
        scores = (qb * a_k.permute(0, 2, 3, 1)).sum(-1)  # weight by A_K and sum the ranks: [B, h, slots]
        scores.masked_fill_(~self.decode_slots(input_pos), float("-inf"))
        p = torch.softmax(scores, dim=-1)
        pa = p.unsqueeze(-1) * a_v.permute(0, 2, 3, 1)  # [B, h, slots, R_V]
        return torch.matmul(pa.reshape(B, h, self.slots * s.v_rank), b_v.view(B, self.slots * s.v_rank, s.head_dim))

    @classmethod
    def shard_state(cls, spec: TPA, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
        """Rank `rank`'s weights of `tp` from the full layer's state_dict: each rank's A factors (rows of
        w_factors) over its n_heads/tp heads and their columns of wo; the B factors, which all heads share,
        whole."""
        n, d = spec.n_heads, spec.head_dim
        h = n // tp
        first = rank * h
        ranks = spec.q_rank + spec.k_rank + spec.v_rank
        a, b = state["w_factors.weight"].split((ranks * n, ranks * d), dim=0)
        a_here = a.unflatten(0, (ranks, n)).narrow(1, first, h).flatten(0, 1)  # A is rank-major: [R x h, d_model]
        out = dict(state)
        out["w_factors.weight"] = torch.cat([a_here, b])
        out["wo.weight"] = head_block(state["wo.weight"], n, first, h, dim=1)
        return out
