"""Dense attention: MHA (n_kv_heads == n_heads), GQA (1 < n_kv_heads < n_heads) and MQA (n_kv_heads == 1)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..units import InputError, ceil_div
from .base import AttentionKind


@dataclass(frozen=True)
class DenseAttention(AttentionKind):
    """Caches one key and one value vector of head_dim per KV head per token per layer. With `output_gate` the
    query projection also gives a gate per head channel, and the attention output is multiplied by its sigmoid
    before the output projection (Qwen3-Next's and Qwen3.5's gated attention)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    output_gate: bool = False

    name = "dense"
    recast_names = ("mha", "mqa", "gqa")
    layer = "dense:DenseAttentionLayer"

    @property
    def kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def label(self) -> str:
        return self.kind if self.kind != "gqa" else f"gqa(kv_heads={self.n_kv_heads})"

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        """K and V per KV head on one GPU; tp > n_kv_heads replicates heads."""
        return ((2 * ceil_div(self.n_kv_heads, tp), self.head_dim),)

    def params(self, d_model: int, tp: int = 1) -> int:
        q_out = ceil_div(self.n_heads, tp) * self.head_dim
        kv_out = ceil_div(self.n_kv_heads, tp) * self.head_dim
        bias = (q_out + 2 * kv_out) if self.qkv_bias else 0
        return d_model * (q_out + 2 * kv_out) + q_out * d_model + bias + self.output_gate * d_model * q_out

    def linear_params(self, d_model: int) -> int:
        q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return d_model * (q_out + 2 * kv_out) + q_out * d_model + self.output_gate * d_model * q_out

    def pair_flops(self, phase: str) -> int:
        """QK^T and PV over all heads."""
        return 4 * self.n_heads * self.head_dim

    def activation_elements(self, tp: int = 1) -> int:
        """The q/k/v projection (alive through v), rotated q and k, and the output, for the heads one GPU holds
        (KV heads replicate where tp exceeds them); an output gate is computed after they are freed. Measured
        exactly on an H100 (examples/tp1-h100.csv: 19456 elements per token at 32 heads, 8 KV heads of 128,
        d_model 4096; examples/tp2-h100.csv at tp 2)."""
        return 3 * ceil_div(self.n_heads, tp) * self.head_dim + 3 * ceil_div(self.n_kv_heads, tp) * self.head_dim

    def check_shardable(self, tp: int) -> str | None:
        reason = super().check_shardable(tp)  # the query heads, then the KV heads
        kv = self.n_kv_heads
        if reason is None and kv % tp and tp % kv:
            reason = f"{self.label}: {kv} KV heads neither split over nor replicate evenly on tp={tp} GPUs"
        return reason

    def shard(self, tp: int) -> "DenseAttention":
        return replace(self, n_heads=self.n_heads // tp, n_kv_heads=ceil_div(self.n_kv_heads, tp))

    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {"kv_heads": 1} if name == "gqa" else {}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "DenseAttention":
        heads = current.n_heads
        if name == "mha":
            kv_heads = heads
        elif name == "mqa":
            kv_heads = 1
        else:
            kv_heads = values.get("kv_heads") or next(k for k in (8, 4, 2, 1) if heads % k == 0)
        if heads % kv_heads:
            raise InputError(f"kv_heads={kv_heads} must divide the model's {heads} heads")
        return cls(n_heads=heads, n_kv_heads=kv_heads, head_dim=current.value_head_dim)

    @classmethod
    def example(cls) -> "DenseAttention":
        return cls(n_heads=4, n_kv_heads=2, head_dim=16)
