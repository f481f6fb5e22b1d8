"""DeepSeek Multi-head Latent Attention: caches the latent c_KV (kv_lora_rank) and the shared RoPE key."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..units import ceil_div
from .base import AttentionKind


@dataclass(frozen=True)
class MLA(AttentionKind):
    """Prefill decompresses the latent into per-head keys and values; decode runs absorbed over the latent.

    The latent is shared by all heads, so tensor parallelism replicates it and the down-projections."""

    n_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int = 0  # 0: queries projected directly from the hidden state

    name = "mla"
    roofline_block = "latent"
    latent_prefill_curve = True
    recast_names = ("mla",)
    layer = "mla:MLALayer"

    @property
    def label(self) -> str:
        return f"mla(kv_lora_rank={self.kv_lora_rank})"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def rope_dim(self) -> int:
        return self.qk_rope_head_dim

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        return ((1, self.kv_lora_rank), (1, self.qk_rope_head_dim))

    def linear_params(self, d_model: int) -> int:
        h = self.n_heads
        if self.q_lora_rank:
            q = d_model * self.q_lora_rank + self.q_lora_rank * h * self.qk_head_dim
        else:
            q = d_model * h * self.qk_head_dim
        kv_down = d_model * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
        out = h * self.v_head_dim * d_model
        return q + kv_down + kv_up + out

    def params(self, d_model: int, tp: int = 1) -> int:
        """The per-head up- and output projections split; the down-projections to the latents (and their norms)
        replicated."""
        heads = ceil_div(self.n_heads, tp)
        norms = self.kv_lora_rank + self.q_lora_rank
        q_down = d_model * self.q_lora_rank
        q_up = (self.q_lora_rank or d_model) * heads * self.qk_head_dim
        kv_down = d_model * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        return q_down + q_up + kv_down + kv_up + heads * self.v_head_dim * d_model + norms

    def pair_flops(self, phase: str) -> int:
        h = self.n_heads
        if phase == "decode":
            # Absorbed: scores against [latent, rope key], values are the latent itself.
            return 2 * h * (self.kv_lora_rank + self.qk_rope_head_dim) + 2 * h * self.kv_lora_rank
        return 2 * h * self.qk_head_dim + 2 * h * self.v_head_dim

    def token_flops(self, phase: str) -> int:
        # Absorbed decode folds W_UK into the query and W_UV into the output (2 h kv_lora_rank (nope + v)
        # FLOPs per token) instead of decompressing the new token's latent: the same count as kv_up's
        # product, which linear_params already holds, so nothing is added in either phase.
        return 0

    def activation_elements(self, tp: int = 1) -> int:
        """The rotated query and the assembled key (h x qk_head_dim each), the decompressed [k_nope | v] buffer
        that v views (h x (nope + v)), and the output (h x v); the query latent and the cached latent are freed
        by then. Measured exactly on an H100 (examples/tp1-h100.csv: 28672 elements per token at h = 32 with
        d_model 4096). All of it is per head, so it splits over tp."""
        h = ceil_div(self.n_heads, tp)
        return h * (2 * self.qk_head_dim + self.qk_nope_head_dim + 2 * self.v_head_dim)

    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {f.name: 0 if f.name == "q_lora_rank" else 1 for f in fields(cls) if f.name != "n_heads"}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "MLA":
        return replace(latent_of(current), **values)

    @classmethod
    def example(cls) -> "MLA":
        return cls(n_heads=4, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, q_lora_rank=24)


def latent_of(attention: AttentionKind) -> MLA:
    """The MLA a model has (itself, or under DSA's indexer), else one in DeepSeek-V2/V3 proportions for its
    heads: latent 4 head dims, RoPE key half a head dim."""
    if isinstance(attention, MLA):
        return attention
    inner = getattr(attention, "mla", None)
    if isinstance(inner, MLA):
        return inner
    d_h = attention.value_head_dim
    return MLA(n_heads=attention.n_heads, kv_lora_rank=4 * d_h, qk_rope_head_dim=d_h // 2, qk_nope_head_dim=d_h,
               v_head_dim=d_h, q_lora_rank=0)
