"""Mamba-1 (Jamba): a selective state-space layer with a decay per channel and state entry.

Per channel d of the d_inner channels, with x_t[d] its input, dt_t[d] > 0 its step, A[d, :] < 0 its state_size decay
rates and B_t, C_t state_size vectors every channel shares: h_t[d] = exp(dt_t[d] A[d]) * h_{t-1}[d] + dt_t[d] x_t[d]
B_t (a d_inner x state_size state) and y_t[d] = h_t[d] . C_t + D[d] x_t[d], gated by silu(z), then out_proj.
dt, B and C come from x_proj (d_inner -> dt_rank + 2 state_size) of the convolved x; dt goes on through dt_proj
(dt_rank -> d_inner). Jamba puts an RMSNorm on dt, B and C between the two (transformers' JambaMambaMixer).

Tensor parallelism splits the channels: in_proj, the convolution, dt_proj, A_log, D and out_proj split with them,
but x_proj sums over every channel, so a split layer all-reduces its dt_rank + 2 state_size outputs per token
before the norms (mixer_all_reduce_elements), as vLLM's MambaMixer does with a row-parallel x_proj.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..units import InputError, ceil_div, minimum, whole
from .base import AttentionKind
from .recurrent import RecurrentKind


@dataclass(frozen=True)
class Mamba(RecurrentKind):
    """in_proj (x and the gate z, d_inner each), a depthwise causal convolution over x, x_proj (dt, B, C), the RMS
    norms on dt, B and C (`dt_bc_norms`, Jamba's), dt_proj with its bias, A_log (d_inner x state_size), D, out_proj.

    Prefill runs chunks of `chunk` tokens (kvplan.models.mamba: a parallel scan inside each chunk, the state
    carried between chunks); per token and channel it forms dt x B^T and reads h C, 2 state_size FLOPs each as
    products, so a chunk of C tokens costs 4 C d_inner state_size, as C decode steps do."""

    d_inner: int
    state_size: int
    dt_rank: int
    conv_kernel: int = 4
    chunk: int = 64
    state_dtype: str | None = None
    conv_bias: bool = True
    proj_bias: bool = False
    dt_bc_norms: bool = True

    name = "mamba"
    recast_names = ("mamba",)
    layer = "mamba:MambaLayer"

    def __post_init__(self) -> None:
        for field in ("d_inner", "state_size", "dt_rank", "conv_kernel", "chunk"):
            if getattr(self, field) < 1:
                raise InputError(f"mamba: {field} must be positive, not {getattr(self, field)}")

    @property
    def n_heads(self) -> int:
        """Channels: each runs a recurrence of its own (a head of one channel), and tensor parallelism splits them."""
        return self.d_inner

    @property
    def head_dim(self) -> int:
        return 1

    @property
    def label(self) -> str:
        return f"mamba(d_inner={self.d_inner},state={self.state_size})"

    def _channels(self, tp: int) -> int:
        return ceil_div(self.d_inner, tp)

    # --- state and weights ----------------------------------------------------------------------------------
    def state_elements(self, tp: int = 1) -> int:
        return self._channels(tp) * self.state_size

    def conv_channels(self, tp: int = 1) -> int:
        """x passes through the convolution; z does not."""
        return self._channels(tp)

    @property
    def selection_width(self) -> int:
        """x_proj's outputs per token: dt (dt_rank), B and C (state_size each)."""
        return self.dt_rank + 2 * self.state_size

    def _projections(self, d_model: int, tp: int) -> int:
        """in_proj, x_proj, dt_proj and out_proj weights (no biases) on one of `tp` GPUs."""
        channels = self._channels(tp)
        return (2 * d_model * channels + channels * self.selection_width + self.dt_rank * channels
                + channels * d_model)

    def linear_params(self, d_model: int) -> int:
        return self._projections(d_model, 1)

    def params(self, d_model: int, tp: int = 1) -> int:
        """Everything splits with the channels except the norms on dt, B and C and out_proj's bias, which every GPU
        holds whole."""
        channels = self._channels(tp)
        conv = channels * self.conv_kernel + (channels if self.conv_bias else 0)
        biases = channels + (2 * channels + d_model if self.proj_bias else 0)  # dt_proj's; in_proj's, out_proj's
        norms = self.selection_width if self.dt_bc_norms else 0
        return self._projections(d_model, tp) + conv + biases + channels * (self.state_size + 1) + norms

    def mixer_all_reduce_elements(self, tp: int) -> int:
        return self.selection_width if tp > 1 else 0

    # --- FLOPs ------------------------------------------------------------------------------------------------
    def chunk_flops(self, length: int) -> int:
        return 4 * length * self.d_inner * self.state_size

    def step_flops(self) -> int:
        return 4 * self.d_inner * self.state_size

    def activation_elements(self, tp: int = 1) -> int:
        """Per token, in the compute dtype, live while kvplan.models.mamba scans the chunks: the projection (x and
        z), the convolved x, dt over the channels, B and C, and the output (the prefill peak of every shape tried,
        to the element, by the live-bytes count of tests/test_recurrent.py)."""
        channels = self._channels(tp)
        return 5 * channels + 2 * self.state_size

    def prefill_scratch_bytes(self, batch: int, prompt: int, in_flight: int, activation_bytes: float, tp: int,
                              flash: bool) -> int:
        """For each of the `batch` sequences: one chunk's fp32 working set at its peak (per token and channel the
        decays, the states and two temporaries of their size, state_size wide; x, dt, B and C of the chunk; the
        state carried in) and the convolution's last kernel - 1 inputs in the compute dtype."""
        channels, c, n = self._channels(tp), self.chunk, self.state_size
        chunk = 4 * c * channels * n + 2 * c * (channels + n) + channels * n
        return minimum(batch, in_flight) * whole(4 * chunk + (self.conv_kernel - 1) * channels * activation_bytes)

    # --- tensor parallelism -------------------------------------------------------------------------------------
    def check_shardable(self, tp: int) -> str | None:
        if self.d_inner % tp:
            return f"{self.label}: {self.d_inner} channels do not split over tp={tp} GPUs"
        return None

    def shard(self, tp: int) -> "Mamba":
        return replace(self, d_inner=self.d_inner // tp)

    # --- re-casts -----------------------------------------------------------------------------------------------
    @classmethod
    def recast_options(cls, name: str) -> dict[str, int]:
        return {"d_inner": 1, "state_size": 1, "dt_rank": 1, "chunk": 1}

    @classmethod
    def recast_from(cls, name: str, current: AttentionKind, values: dict[str, int]) -> "Mamba":
        """Twice the attention's width (Mamba's expand of 2), a state of 16 and dt_rank width / 32 (Jamba's
        ceil(hidden_size / 16) at expand 2), unless given."""
        if isinstance(current, Mamba):
            base = current
        else:
            width = 2 * current.n_heads * current.value_head_dim
            base = cls(d_inner=width, state_size=16, dt_rank=max(1, ceil_div(width, 32)))
        return replace(base, **values)

    @classmethod
    def example(cls) -> "Mamba":
        return cls(d_inner=12, state_size=5, dt_rank=3, chunk=4)
