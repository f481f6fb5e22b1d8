"""Tensor Product Attention (T6): Q, K, V as rank-R sums of outer products a (heads) x b (head_dim)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..units import ceil_div
from .base import AttentionKind


@dataclass(frozen=True)
class TPA(AttentionKind):
    """The cache holds A_K (R_K x h), B_K (R_K x d_h, RoPE applied), A_V (R_V x h), B_V (R_V x d_h) per token
    per layer: (R_K + R_V)(h + d_h) elements. A factors are per head and split with the heads under tensor
    parallelism; B factors are shared by all heads and replicated."""

    n_heads: int
    head_dim: int
    q_rank: int = 6
    k_rank: int = 2
    v_rank: int = 2

    name = "tpa"
    recast_names = ("tpa",)
    layer = "tpa:TPALayer"

    @property
    def label(self) -> str:
        return f"tpa(q={self.q_rank},k={self.k_rank},v={self.v_rank})"

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        ranks = self.k_rank + self.v_rank
        return ((ranks, ceil_div(self.n_heads, tp)), (ranks, self.head_dim))

    def linear_params(self, d_model: int) -> int:
        h, d_h = self.n_heads, self.head_dim
        factors = d_model * (self.q_rank + self.k_rank + self.v_rank) * (h + d_h)
        return factors + h * d_h * d_model

    def params(self, d_model: int, tp: int = 1) -> int:
        """A projections and the output split by head, B projections replicated."""
        heads = ceil_div(self.n_heads, tp)
        ranks = self.q_rank + self.k_rank + self.v_rank
        return d_model * ranks * (heads + self.head_dim) + heads * self.head_dim * d_model

    def decode_scratch_elements(self, cached_tokens: int) -> int:
        """Per query head and key: q . B_K per K rank and its product with A_K, the scores, the probabilities,
        and the probabilities weighted by A_V per V rank."""
        return (2 * self.k_rank + 2 + self.v_rank) * self.n_heads * cached_tokens

    @property
    def decode_order(self) -> str:
        """The contraction decode runs, the one with fewer FLOPs per cached key (decode_pair_flops):
        "flash" (FlashTPA, tensorgi/T6 decode/flashtpa_decode_torch.py) where R_Q (h + d_h) < h d_h, else
        "rebuild"."""
        flash, rebuild = self.decode_pair_flops("flash"), self.decode_pair_flops("rebuild")
        return "flash" if flash < rebuild else "rebuild"

    def decode_pair_flops(self, order: str) -> int:
        """FLOPs per cached key of one decoded query in a contraction order (matrix products only; weighting
        by A_K and by A_V are elementwise products, h R each, left out like softmax).

        rebuild: q = (1/R_Q) A_Q^T B_Q rebuilt per head, then q . B_K per K rank (2 h R_K d_h); P weighted by
        A_V and contracted with B_V (2 h R_V d_h).
        flash: B_Q . B_K per (Q rank, K rank), shared by all heads (2 R_Q R_K d_h), mixed into each head by
        A_Q (2 h R_Q R_K), then the same value side (2 h R_V d_h)."""
        h, d_h, r_q, r_k, r_v = self.n_heads, self.head_dim, self.q_rank, self.k_rank, self.v_rank
        values = 2 * h * r_v * d_h
        if order == "flash":
            return 2 * r_q * r_k * d_h + 2 * h * r_q * r_k + values
        return 2 * h * r_k * d_h + values

    def decode_token_flops(self, order: str) -> int:
        """FLOPs per decoded query beyond the keys: rebuilding q from R_Q factor pairs (2 R_Q h d_h) in the
        rebuild order; nothing in the flash order."""
        return 2 * self.q_rank * self.n_heads * self.head_dim if order == "rebuild" else 0

    def pair_flops(self, phase: str) -> int:
        if phase == "decode":
            return self.decode_pair_flops(self.decode_order)
        return 4 * self.n_heads * self.head_dim

    def token_flops(self, phase: str) -> int:
        if phase == "decode":
            return self.decode_token_flops(self.decode_order)
        # Prefill rebuilds Q, K and V, each head-by-dim tensor from R factor pairs: 2 R h d_h per token.
        return 2 * (self.q_rank + self.k_rank + self.v_rank) * self.n_heads * self.head_dim

    def activation_elements(self, tp: int = 1) -> int:
        """The larger of two moments of prefill on one GPU (h' = heads there): rebuilding Q, K and V, with the
        factor projection (R (h' + d_h), the B factors replicated), the rotated B_Q and B_K and the three rebuilt
        tensors alive; or attention, with Q, K, V and the output (4 h' d_h; the factors freed by then). Measured
        exactly on an H100 (examples/tp1-h100.csv: attention's moment at h = 32, d_h = 128; examples/tp2-h100.csv:
        the rebuild's at tp 2)."""
        heads, d_h = ceil_div(self.n_heads, tp), self.head_dim
        ranks = self.q_rank + self.k_rank + self.v_rank
        rebuild = ranks * (heads + d_h) + (self.q_rank + self.k_rank) * d_h + 3 * heads * d_h
        return max(rebuild, 4 * heads * d_h)

    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {"q_rank": 1, "k_rank": 1, "v_rank": 1}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "TPA":
        base = current if isinstance(current, TPA) else cls(n_heads=current.n_heads, head_dim=current.value_head_dim)
        return replace(base, **values)

    @classmethod
    def example(cls) -> "TPA":
        return cls(n_heads=4, head_dim=16, q_rank=3, k_rank=2, v_rank=2)
