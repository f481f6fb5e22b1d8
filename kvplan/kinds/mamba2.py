"""Mamba-2 (Nemotron-H, Falcon-H1): a selective state-space layer with a scalar decay per head.

Per head, with x_t the head's head_dim inputs, dt_t > 0 its step, A < 0 its decay rate and B_t, C_t the state_size
vectors of the head's group: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T (a head_dim x state_size state) and
y_t = h_t C_t + D x_t, then a gated RMSNorm (per group of heads) and the output projection. n_groups groups of
B and C serve the heads in equal shares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..units import InputError, ceil_div, minimum
from .base import AttentionKind
from .recurrent import RecurrentKind


@dataclass(frozen=True)
class Mamba2(RecurrentKind):
    """in_proj (the gate z, x, B, C and dt), a depthwise causal convolution over x, B and C, A_log, D and dt_bias
    per head, a gated RMSNorm over the heads (unless `gated_norm` is off, as in Falcon-H1-0.5B), out_proj.

    Prefill per chunk of C tokens (kvplan.models.mamba2, the state-space dual form of the Mamba-2 paper):
    C B^T per group (2 C^2 state_size), its product with the heads' x (2 C^2 head_dim per head), the chunk's
    state B^T x and the read of the incoming state C h (2 C state_size head_dim per head each). Decode per head:
    the update x B^T and the read h C, 2 head_dim state_size each."""

    n_heads: int
    head_dim: int
    state_size: int
    n_groups: int = 1
    conv_kernel: int = 4
    chunk: int = 128
    state_dtype: str | None = None
    conv_bias: bool = True
    gated_norm: bool = True

    name = "mamba2"
    recast_names = ("mamba2",)
    layer = "mamba2:Mamba2Layer"

    def __post_init__(self) -> None:
        if self.n_groups < 1 or self.n_heads % self.n_groups:
            raise InputError(f"mamba2: {self.n_heads} heads must be a multiple of {self.n_groups} groups")

    @property
    def label(self) -> str:
        return f"mamba2(heads={self.n_heads},state={self.state_size})"

    def _shares(self, tp: int) -> tuple[int, int]:
        """(heads, groups) on one of `tp` GPUs; a group whose heads span several GPUs is on each of them."""
        return ceil_div(self.n_heads, tp), ceil_div(self.n_groups, tp)

    # --- state and weights ----------------------------------------------------------------------------------
    def state_elements(self, tp: int = 1) -> int:
        return self._shares(tp)[0] * self.head_dim * self.state_size

    def conv_channels(self, tp: int = 1) -> int:
        """x, B and C pass through the convolution; z and dt do not."""
        heads, groups = self._shares(tp)
        return heads * self.head_dim + 2 * groups * self.state_size

    def _projections(self, d_model: int, tp: int) -> int:
        heads, groups = self._shares(tp)
        inner = heads * self.head_dim
        return d_model * (2 * inner + 2 * groups * self.state_size + heads) + inner * d_model

    def linear_params(self, d_model: int) -> int:
        return self._projections(d_model, 1)

    def params(self, d_model: int, tp: int = 1) -> int:
        """Everything splits with the heads, except B and C's rows and channels, which a GPU holds for each group
        its heads read."""
        heads, _ = self._shares(tp)
        channels = self.conv_channels(tp)
        conv = channels * self.conv_kernel + (channels if self.conv_bias else 0)
        norm = heads * self.head_dim if self.gated_norm else 0
        return self._projections(d_model, tp) + conv + 3 * heads + norm

    # --- FLOPs ------------------------------------------------------------------------------------------------
    def chunk_flops(self, length: int) -> int:
        c, n, p = length, self.state_size, self.head_dim
        return self.n_groups * 2 * c * c * n + self.n_heads * (2 * c * c * p + 4 * c * n * p)

    def step_flops(self) -> int:
        return self.n_heads * 4 * self.head_dim * self.state_size

    def activation_elements(self, tp: int = 1) -> int:
        """Per token, in the compute dtype, live while kvplan.models.mamba2 scans the chunks: the projection (z, x,
        B, C, dt), the convolved x, B and C, dt after its softplus, and the output (the prefill peak of every
        shape tried, to the element, by the live-bytes count of tests/test_recurrent.py)."""
        heads, groups = self._shares(tp)
        inner = heads * self.head_dim
        projection = 2 * inner + 2 * groups * self.state_size + heads
        return projection + self.conv_channels(tp) + heads + inner

    def prefill_scratch_bytes(self, batch: int, prompt: int, in_flight: int, activation_bytes: float, tp: int,
                              flash: bool) -> int:
        """One chunk's fp32 working set for each of the `batch` sequences, the larger of its two moments: the
        scores (C B^T per group, its copy per head times the decay matrix, x dt, B and C of the groups, the
        state) or the state's update (B and C repeated to every head and one of them decayed, the old and new
        states, x dt and the chunk's output); the decays of every head in both."""
        heads, groups = self._shares(tp)
        c, n, p = self.chunk, self.state_size, self.head_dim
        scores = groups * c * c + 2 * heads * c * c + heads * c * p + 2 * groups * c * n + heads * n * p
        update = 3 * heads * c * n + 2 * heads * n * p + 2 * heads * c * p
        return 4 * minimum(batch, in_flight) * (max(scores, update) + 2 * heads * c)

    # --- tensor parallelism -------------------------------------------------------------------------------------
    def check_shardable(self, tp: int) -> str | None:
        reason = super().check_shardable(tp)
        if reason is None and self.n_groups % tp and tp % self.n_groups:
            reason = f"{self.label}: {self.n_groups} groups neither split over nor replicate evenly on tp={tp} GPUs"
        return reason

    def shard(self, tp: int) -> "Mamba2":
        return replace(self, n_heads=self.n_heads // tp, n_groups=ceil_div(self.n_groups, tp))

    # --- re-casts -----------------------------------------------------------------------------------------------
    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {"heads": 1, "head_dim": 1, "state_size": 1, "groups": 1, "chunk": 1}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "Mamba2":
        """Twice the attention's width (Mamba-2's expand of 2) in heads of 64, a state of 128 and one group,
        unless given."""
        if isinstance(current, Mamba2):
            base = current
        else:
            width = 2 * current.n_heads * current.value_head_dim
            base = cls(n_heads=max(1, width // 64), head_dim=64, state_size=128)
        renamed = {"heads": "n_heads", "groups": "n_groups"}
        return replace(base, **{renamed.get(k, k): v for k, v in values.items()})

    @classmethod
    def example(cls) -> "Mamba2":
        return cls(n_heads=4, head_dim=8, state_size=6, n_groups=2, chunk=4)
