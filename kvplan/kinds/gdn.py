"""Gated DeltaNet (Qwen3-Next, Qwen3.5): linear attention whose state follows the gated delta rule.

Per value head, with S the key_head_dim x head_dim state, alpha_t in (0, 1) a decay and beta_t in (0, 1) a
write strength: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, and the output o_t = S_t^T q_t
(q and k L2-normalised, q scaled by key_head_dim^-1/2), then a gated RMSNorm and the output projection.
n_key_heads query/key heads serve the n_heads value heads in equal groups (grouped value attention).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..units import InputError, ceil_div, minimum
from .base import AttentionKind
from .recurrent import RecurrentKind


@dataclass(frozen=True)
class GatedDeltaNet(RecurrentKind):
    """Qwen3-Next's layer: in_proj_qkvz (q, k, v and the output gate z), in_proj_ba (beta and the decay's input
    per value head), a depthwise causal convolution over q, k and v (no bias), A_log and dt_bias per value head,
    a gated RMSNorm over head_dim, out_proj.

    Prefill per chunk of C tokens and value head (kvplan.models.gdn, as flash-linear-attention's chunked form):
    K K^T and Q K^T (2 C^2 key_head_dim each), a unit lower-triangular solve for the chunk's new values and
    decayed keys (C (C - 1) (key_head_dim + head_dim)), Q S, K S and K^T V_new against the state (2 C dk dv
    each) and the within-chunk product of the scores with V_new (2 C^2 head_dim). Decode per value head: S^T k,
    the rank-one update and S^T q, 2 dk dv each."""

    n_heads: int  # value heads
    n_key_heads: int
    key_head_dim: int
    head_dim: int  # value head dim
    conv_kernel: int = 4
    chunk: int = 64
    state_dtype: str | None = None

    name = "gdn"
    recast_names = ("gdn", "hybrid")
    recast_attention_every = {"hybrid": 4}  # Qwen3-Next's full_attention_interval
    layer = "gdn:GatedDeltaNetLayer"

    def __post_init__(self) -> None:
        if self.n_key_heads < 1 or self.n_heads % self.n_key_heads:
            raise InputError(f"gdn: {self.n_heads} value heads must be a multiple of {self.n_key_heads} key heads")

    @property
    def label(self) -> str:
        return f"gdn(heads={self.n_heads})"

    def _heads(self, tp: int) -> tuple[int, int]:
        """(key heads, value heads) on one of `tp` GPUs."""
        return ceil_div(self.n_key_heads, tp), ceil_div(self.n_heads, tp)

    # --- state and weights ----------------------------------------------------------------------------------
    def state_elements(self, tp: int = 1) -> int:
        return self._heads(tp)[1] * self.key_head_dim * self.head_dim

    def conv_channels(self, tp: int = 1) -> int:
        """q, k and v pass through the convolution; z, beta and the decay do not."""
        key_heads, heads = self._heads(tp)
        return 2 * key_heads * self.key_head_dim + heads * self.head_dim

    def _projections(self, d_model: int, tp: int) -> int:
        key_heads, heads = self._heads(tp)
        qkvz = 2 * key_heads * self.key_head_dim + 2 * heads * self.head_dim
        return d_model * (qkvz + 2 * heads) + heads * self.head_dim * d_model

    def linear_params(self, d_model: int) -> int:
        return self._projections(d_model, 1)

    def params(self, d_model: int, tp: int = 1) -> int:
        """Projections, convolution, A_log and dt_bias split with the heads; the norm's weight (head_dim, shared
        by all heads) replicated."""
        return (self._projections(d_model, tp) + self.conv_channels(tp) * self.conv_kernel
                + 2 * self._heads(tp)[1] + self.head_dim)

    # --- FLOPs ------------------------------------------------------------------------------------------------
    def chunk_solve_flops(self, length: int) -> int:
        return self.n_heads * length * (length - 1) * (self.key_head_dim + self.head_dim)

    def chunk_flops(self, length: int) -> int:
        c, dk, dv = length, self.key_head_dim, self.head_dim
        return self.n_heads * (2 * c * c * (2 * dk + dv) + 6 * c * dk * dv) + self.chunk_solve_flops(length)

    def step_flops(self) -> int:
        return self.n_heads * 6 * self.key_head_dim * self.head_dim

    def activation_elements(self, tp: int = 1) -> int:
        """Per token, in the compute dtype, live while kvplan.models.gdn scans the chunks: the q, k, v, z
        projection, the convolved q, k, v, q and k repeated to the value heads, the output and beta (the
        prefill peak of every shape tried, to the element, by the live-bytes count of tests/test_recurrent.py)."""
        key_heads, heads = self._heads(tp)
        projection = 2 * key_heads * self.key_head_dim + 2 * heads * self.head_dim
        return projection + self.conv_channels(tp) + 2 * heads * self.key_head_dim + heads * self.head_dim + heads

    def prefill_scratch_bytes(self, batch: int, prompt: int, in_flight: int, activation_bytes: float, tp: int,
                              flash: bool) -> int:
        """The log decay in fp32 for every token in flight, and one chunk's fp32 working set for each of the
        `batch` sequences: per value head its copies of q, k and v, the decay, K K^T and Q K^T matrices, the
        triangular solve's right-hand side and result, and the states (an upper bound: every one counted live
        at once)."""
        heads, c, dk, dv = self._heads(tp)[1], self.chunk, self.key_head_dim, self.head_dim
        chunk = heads * (3 * c * c + c * (5 * dk + 5 * dv) + 3 * dk * dv)
        return 4 * (in_flight * heads + minimum(batch, in_flight) * chunk)

    # --- tensor parallelism -------------------------------------------------------------------------------------
    def check_shardable(self, tp: int) -> str | None:
        if self.n_key_heads % tp:
            return f"{self.label}: {self.n_key_heads} key heads do not split over tp={tp} GPUs"
        return super().check_shardable(tp)

    def shard(self, tp: int) -> "GatedDeltaNet":
        return replace(self, n_heads=self.n_heads // tp, n_key_heads=self.n_key_heads // tp)

    # --- re-casts -----------------------------------------------------------------------------------------------
    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {"key_heads": 1, "chunk": 1}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "GatedDeltaNet":
        """As many value heads as the model has query heads, of its head width; key heads default to as many."""
        base = current if isinstance(current, GatedDeltaNet) else cls(
            n_heads=current.n_heads, n_key_heads=current.n_heads, key_head_dim=current.value_head_dim,
            head_dim=current.value_head_dim)
        values = {"n_key_heads" if k == "key_heads" else k: v for k, v in values.items()}
        return replace(base, **values)

    @classmethod
    def example(cls) -> "GatedDeltaNet":
        return cls(n_heads=4, n_key_heads=2, key_head_dim=8, head_dim=12, chunk=4)
