"""Mamba-2 (kvplan.kinds.mamba2): the chunked state-space dual form in prefill, one recurrence step per decoded token.

State per sequence: `ssm_state` [max_batch, heads, state_size, head_dim] in the kind's state dtype and
`conv_state` [max_batch, kernel - 1, conv channels] in the compute dtype. in_proj's rows are z and x (heads,
head_dim each), B and C (groups, state_size each) and dt (one per head); x, B and C are the convolution's
channels.

The chunked form (the Mamba-2 paper's ssd_minimal, and the chunk kernels of mamba_ssm): with a = dt A per token
and cumulative sums A_i inside a chunk of C tokens, L_ij = exp(A_i - A_j) (j <= i); per chunk, with the incoming
state h: y = ((C B^T) * L) (dt x) + exp(A) C h, and h <- exp(A_C) h + (exp(A_C - A) B)^T (dt x). C B^T is one
product per group, shared by the group's heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.kinds import Mamba2

from .common import Rope, head_block
from .recurrent import StateMixin, accumulation, causal_conv, conv_step, gated_rms_norm_, state_dtype


def chunk_scan(x, dt, A, B_, C_, chunk: int, state: torch.Tensor | None = None):
    """x [B, T, H, P], dt [B, T, H] (after softplus), A [H] (negative), B_, C_ [B, T, G, N], the incoming state
    [B, H, N, P] (None: zeros) -> (y [B, T, H, P] in x's dtype, without the D skip; final state in the
    accumulation dtype).

    Chunk after chunk (the last one may be shorter), each chunk's slice taken to the accumulation dtype on its
    own: one chunk's C x C matrices and copies exist at a time (Mamba2.prefill_scratch_bytes)."""
    b, T, H, P = x.shape
    group, acc = H // B_.size(2), accumulation(x.dtype)
    S = x.new_zeros(b, H, B_.size(-1), P, dtype=acc) if state is None else state.to(acc)
    y = torch.empty_like(x)
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        xi, dti, Bi, Ci = (t[:, start:end].movedim(1, 2).to(acc) for t in (x, dt, B_, C_))  # [b, heads, C, ...]
        xdt = xi * dti.unsqueeze(-1)
        del xi
        a = (dti * A.to(acc)[:, None]).cumsum(-1)  # [b, H, C]
        causal = torch.ones(end - start, end - start, dtype=torch.bool, device=x.device).tril()
        decay = (a.unsqueeze(-1) - a.unsqueeze(-2)).masked_fill_(~causal, float("-inf")).exp_()  # [b, H, C, C]
        scores = (Ci @ Bi.transpose(-1, -2)).repeat_interleave(group, 1).mul_(decay)  # one C B^T per group
        del decay
        yi = scores @ xdt
        del scores
        Bi, Ci = Bi.repeat_interleave(group, 1), Ci.repeat_interleave(group, 1)  # [b, H, C, N]
        yi += (Ci * a.exp().unsqueeze(-1)) @ S
        y[:, start:end] = yi.movedim(1, 2)
        last = a[..., -1:]
        S = S * last.exp().unsqueeze(-1)
        S += (Bi * (last - a).exp().unsqueeze(-1)).transpose(-1, -2) @ xdt
    return y, S


def scan_step(x, dt, A, B_, C_, state: torch.Tensor):
    """One token: x [B, H, P], dt [B, H], B_, C_ [B, G, N], state [B, H, N, P] -> (y [B, H, P], new state):
    h <- exp(dt A) h + B (dt x)^T, y = h^T C, two products of 2 N P FLOPs per head."""
    acc = accumulation(x.dtype)
    group = x.size(1) // B_.size(1)
    x, dt, B_, C_ = (t.to(acc) for t in (x, dt, B_, C_))
    B_, C_ = B_.repeat_interleave(group, 1), C_.repeat_interleave(group, 1)
    S = state.to(acc) * (dt * A.to(acc)).exp()[..., None, None]
    S = S + B_.unsqueeze(-1) @ (x * dt.unsqueeze(-1)).unsqueeze(-2)
    return (C_.unsqueeze(-2) @ S).squeeze(-2), S


class Mamba2Layer(nn.Module, StateMixin):
    def __init__(self, spec: Mamba2, d_model: int, window: int | None, max_batch: int, max_context: int,
                 rope: Rope, cache_dtype: torch.dtype, **factory):
        super().__init__()
        self.spec = spec
        h, p, n, g = spec.n_heads, spec.head_dim, spec.state_size, spec.n_groups
        self.inner, self.conv_dim = h * p, spec.conv_channels()
        self.in_proj = nn.Linear(d_model, 2 * self.inner + 2 * g * n + h, bias=False, **factory)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, spec.conv_kernel, **factory))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim, **factory)) if spec.conv_bias else None
        self.A_log = nn.Parameter(torch.zeros(h, **factory))
        self.D = nn.Parameter(torch.ones(h, **factory))
        self.dt_bias = nn.Parameter(torch.ones(h, **factory))
        self.norm_weight = nn.Parameter(torch.ones(self.inner, **factory)) if spec.gated_norm else None
        self.out_proj = nn.Linear(self.inner, d_model, bias=False, **factory)
        compute, device = factory.get("dtype") or torch.get_default_dtype(), factory.get("device")
        self.hold("ssm_state", (max_batch, h, n, p), state_dtype(spec, compute), device)
        self.hold("conv_state", (max_batch, spec.conv_kernel - 1, self.conv_dim), compute, device)

    def _split(self, conv_out: torch.Tensor, dt: torch.Tensor):
        """x [B, T, H, P], B and C [B, T, G, N] from the convolved channels; dt after its bias and softplus."""
        s = self.spec
        x, B_, C_ = F.silu(conv_out, inplace=True).split((self.inner,) + (s.n_groups * s.state_size,) * 2, -1)
        shape = conv_out.shape[:2]
        return (x.view(*shape, s.n_heads, -1), F.softplus(dt + self.dt_bias), B_.view(*shape, s.n_groups, -1),
                C_.view(*shape, s.n_groups, -1))

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The gate (and the gated norm) on y [B, T, H, P], in place, then the output projection."""
        y = y.to(z.dtype).flatten(-2)
        if self.spec.gated_norm:
            y = gated_rms_norm_(y, z, self.norm_weight, groups=self.spec.n_groups, norm_before_gate=False)
        else:
            y.mul_(F.silu(z))
        return self.out_proj(y)

    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        z, xbc, dt = self.in_proj(x).split((self.inner, self.conv_dim, self.spec.n_heads), -1)
        conv_out, history = causal_conv(xbc, self.conv_weight, self.conv_bias)
        xs, dt, B_, C_ = self._split(conv_out, dt)
        del conv_out
        y, state = chunk_scan(xs, dt, -self.A_log.exp(), B_, C_, self.spec.chunk)
        y.addcmul_(xs, self.D.unsqueeze(-1).to(y.dtype))  # the D skip
        del xs, B_, C_
        if write_cache:
            self.keep("ssm_state", state)
            self.keep("conv_state", history)
        return self._output(y, z)

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        z, xbc, dt = self.in_proj(x).split((self.inner, self.conv_dim, self.spec.n_heads), -1)
        conv_out, history = conv_step(xbc, self.conv_weight, self.conv_bias, self.conv_state[:b])
        xs, dt, B_, C_ = self._split(conv_out, dt)
        y, state = scan_step(xs[:, 0], dt[:, 0], -self.A_log.exp(), B_[:, 0], C_[:, 0], self.ssm_state[:b])
        y = y.unsqueeze(1).addcmul_(xs.to(y.dtype), self.D.unsqueeze(-1).to(y.dtype))  # the D skip
        self.keep("ssm_state", state)
        self.keep("conv_state", history)
        return self._output(y, z)

    @classmethod
    def shard_state(cls, spec: Mamba2, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
        """Rank `rank`'s n_heads/tp heads (their rows of z, x and dt, channels of the convolution, A_log, D,
        dt_bias, norm weights and out_proj columns) and the groups of B and C those heads read: groups/tp of
        them, or the one group they share where tp exceeds the groups. Where the group's heads span several
        GPUs, each normalises over its own heads (a serving engine all-reduces the norm's sums there)."""
        h, p, n, g = spec.n_heads, spec.head_dim, spec.state_size, spec.n_groups
        heads, first = h // tp, rank * (h // tp)
        groups, group_first = -(-g // tp), first // (h // g)

        def channels(weight: torch.Tensor, with_z: bool) -> torch.Tensor:
            parts = weight.split(((h * p,) if with_z else ()) + (h * p, g * n, g * n) + ((h,) if with_z else ()))
            per_head = [head_block(part, h, first, heads) for part in (parts[:2] if with_z else parts[:1])]
            per_group = [head_block(part, g, group_first, groups) for part in parts[len(per_head):len(per_head) + 2]]
            tail = [parts[-1][first:first + heads]] if with_z else []
            return torch.cat(per_head + per_group + tail)

        out = {**state, "in_proj.weight": channels(state["in_proj.weight"], True),
               "conv_weight": channels(state["conv_weight"], False),
               "out_proj.weight": head_block(state["out_proj.weight"], h, first, heads, dim=1)}
        for name in ("A_log", "D", "dt_bias"):
            out[name] = state[name][first:first + heads]
        if "conv_bias" in state:
            out["conv_bias"] = channels(state["conv_bias"], False)
        if "norm_weight" in state:
            out["norm_weight"] = head_block(state["norm_weight"], h, first, heads)
        return out
