"""Pieces the recurrent layers share: per-sequence state buffers, the short causal convolution, the gated norm.

A recurrent layer (kvplan.kinds.recurrent) holds, per sequence, its recurrent state and the last kernel - 1
inputs of its depthwise causal convolution, in buffers of max_batch rows allocated once; they hold the same
bytes at every context. Prefill runs from an empty state over positions 0..T-1 and leaves the final state in
the buffers; decode advances rows 0..B-1 by one token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import TORCH_DTYPES


def state_dtype(spec, compute: torch.dtype) -> torch.dtype:
    """The recurrent state's storage: the kind's state_dtype when it names one, else the compute dtype."""
    return TORCH_DTYPES[spec.state_dtype] if spec.state_dtype else compute


def accumulation(dtype: torch.dtype) -> torch.dtype:
    """The dtype the chunked and step forms compute in: fp32, or fp64 for an fp64 model."""
    return torch.promote_types(dtype, torch.float32)


class StateMixin:
    """The state buffers of one recurrent layer, named in `state_names`: held whole at every context."""

    state_names: tuple[str, ...] = ()

    def hold(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> None:
        """Allocate state buffer `name` (zeros) and list it among the layer's state."""
        self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.state_names = (*self.state_names, name)

    def cache_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.state_names]

    def cache_bytes_live(self, context: int) -> int:
        """Bytes of this layer's state (all batch rows) once a sequence has any token: all of it."""
        return sum(buf.nbytes for buf in self.cache_buffers()) if context > 0 else 0

    def reset_cache(self) -> None:
        for buf in self.cache_buffers():
            buf.zero_()

    def keep(self, name: str, values: torch.Tensor) -> None:
        """Store `values` (rows 0..B-1) in state buffer `name`."""
        getattr(self, name)[:values.size(0)].copy_(values)


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of x [B, T, C] with weight [C, K] from an empty history -> (output [B, T, C],
    the last K - 1 inputs [B, K - 1, C], the convolution's state after the prompt). One conv1d call, which
    FlopCounterMode counts as 2 C K FLOPs per token."""
    k = weight.size(1)
    padded = F.pad(x.transpose(1, 2), (k - 1, 0))  # [B, C, K - 1 + T]
    out = F.conv1d(padded, weight.unsqueeze(1), bias, groups=weight.size(0)).transpose(1, 2)
    return out, padded[:, :, padded.size(-1) - (k - 1):].transpose(1, 2).clone()  # a copy: the input is freed


def conv_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, history: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token x [B, 1, C] through the convolution after `history` [B, K - 1, C] -> (output [B, 1, C], the new
    history)."""
    window = torch.cat([history.to(x.dtype), x], dim=1)  # [B, K, C]
    out = (window * weight.t()).sum(1, keepdim=True)
    if bias is not None:
        out = out + bias
    return out, window[:, 1:]


def gated_rms_norm_(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor | None, groups: int = 1,
                    eps: float = 1e-6, norm_before_gate: bool = True) -> torch.Tensor:
    """In place: RMSNorm of y [..., D] over `groups` equal groups of channels, scaled by `weight` and gated by
    silu(gate); with norm_before_gate off the gate multiplies first (Mamba-2's order). Holds one temporary the
    size of y (silu of the gate)."""
    if not norm_before_gate:
        y.mul_(F.silu(gate))
    grouped = y.unflatten(-1, (groups, -1))
    squares = torch.linalg.vector_norm(grouped, dim=-1, keepdim=True, dtype=accumulation(y.dtype)).square_()
    grouped.mul_(torch.rsqrt(squares.div_(grouped.size(-1)).add_(eps)).to(y.dtype))
    if weight is not None:
        y.mul_(weight)
    return y.mul_(F.silu(gate)) if norm_before_gate else y
