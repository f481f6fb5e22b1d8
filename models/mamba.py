"""Mamba-1 (kvplan.kinds.mamba): a chunked parallel scan in prefill, one recurrence step per decoded token.

State per sequence: `ssm_state` [max_batch, d_inner, state_size] in the kind's state dtype and `conv_state`
[max_batch, kernel - 1, d_inner] in the compute dtype. in_proj's rows are x then the gate z (d_inner each), as
transformers' JambaMambaMixer splits them; x is the convolution's only input.

The chunked form: per channel d and state entry n the recurrence h_t = a_t h_{t-1} + u_t, with a_t = exp(dt_t[d]
A[d, n]) and u_t = dt_t[d] x_t[d] B_t[n], is a scan of the pairs (a, u) under (a1, u1) then (a2, u2) = (a1 a2,
a2 u1 + u2). Inside a chunk of C tokens a Hillis-Steele scan (log2 C elementwise rounds) gives every token's
product of decays and its state from zero; the state carried in from the previous chunk adds its decayed
share, y_t = h_t C_t, and the chunk's last state goes on to the next.

A layer split over tensor-parallel GPUs calls `mid_all_reduce` (None: a whole layer) on x_proj's output, which
sums over the channels each GPU holds; kvplan.profilers.distributed sets it to torch.distributed.all_reduce.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.kinds import Mamba

from .recurrent import StateMixin, accumulation, causal_conv, conv_step, state_dtype

NORM_EPS = 1e-6  # Jamba's rms_norm_eps, which its dt, B and C norms use


def selective_scan(x, dt, A, B_, C_, chunk: int, state: torch.Tensor | None = None):
    """x, dt [B, T, D] (dt after its softplus), A [D, N] (negative), B_, C_ [B, T, N], the incoming state [B, D, N]
    (None: zeros) -> (y [B, T, D] in x's dtype, without the D skip; final state in the accumulation dtype).
    Per chunk two products of 2 C D N FLOPs: the inputs dt x B^T and the read h C."""
    b, T, D = x.shape
    acc = accumulation(x.dtype)
    S = x.new_zeros(b, D, A.size(-1), dtype=acc) if state is None else state.to(acc)
    A = A.to(acc)
    y = torch.empty_like(x)
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        xi, dti, Bi, Ci = (t[:, start:end].to(acc) for t in (x, dt, B_, C_))
        decay = (dti.unsqueeze(-1) * A).exp_()  # [b, c, D, N]
        states = (xi * dti).unsqueeze(-1) @ Bi.unsqueeze(-2)  # [b, c, D, N]: u_t
        step = 1
        while step < end - start:  # after round k, each token holds the scan of its 2^k tokens ending at it
            states[:, step:] += decay[:, step:] * states[:, :-step]
            decay[:, step:] = decay[:, step:] * decay[:, :-step]
            step *= 2
        states += decay * S.unsqueeze(1)  # the state carried in, decayed to each token
        del decay
        y[:, start:end] = (states @ Ci.unsqueeze(-1)).squeeze(-1)
        S = states[:, -1]
    return y, S


def scan_step(x, dt, A, B_, C_, state: torch.Tensor):
    """One token: x, dt [B, D], B_, C_ [B, N], state [B, D, N] -> (y [B, D], new state): h <- exp(dt A) h +
    (dt x) B^T, y = h C, two products of 2 D N FLOPs."""
    acc = accumulation(x.dtype)
    x, dt, B_, C_ = (t.to(acc) for t in (x, dt, B_, C_))
    S = state.to(acc) * (dt.unsqueeze(-1) * A.to(acc)).exp()
    S = S + (x * dt).unsqueeze(-1) @ B_.unsqueeze(-2)
    return (S @ C_.unsqueeze(-1)).squeeze(-1), S


class MambaLayer(nn.Module, StateMixin):
    def __init__(self, spec: Mamba, d_model: int, window: int | None, max_batch: int, max_context: int, rope,
                 cache_dtype: torch.dtype, **factory):
        super().__init__()
        self.spec = spec
        d, n, r = spec.d_inner, spec.state_size, spec.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d, bias=spec.proj_bias, **factory)
        self.conv_weight = nn.Parameter(torch.empty(d, spec.conv_kernel, **factory))
        self.conv_bias = nn.Parameter(torch.zeros(d, **factory)) if spec.conv_bias else None
        self.x_proj = nn.Linear(d, spec.selection_width, bias=False, **factory)
        self.dt_proj = nn.Linear(r, d, bias=True, **factory)
        self.A_log = nn.Parameter(torch.zeros(d, n, **factory))
        self.D = nn.Parameter(torch.ones(d, **factory))
        self.out_proj = nn.Linear(d, d_model, bias=spec.proj_bias, **factory)
        if spec.dt_bc_norms:
            self.dt_norm = nn.Parameter(torch.ones(r, **factory))
            self.b_norm = nn.Parameter(torch.ones(n, **factory))
            self.c_norm = nn.Parameter(torch.ones(n, **factory))
        self.mid_all_reduce: Callable[[torch.Tensor], object] | None = None
        compute, device = factory.get("dtype") or torch.get_default_dtype(), factory.get("device")
        self.hold("ssm_state", (max_batch, d, n), state_dtype(spec, compute), device)
        self.hold("conv_state", (max_batch, spec.conv_kernel - 1, d), compute, device)

    def _select(self, xc: torch.Tensor):
        """dt [B, T, D] after dt_proj, its bias and softplus, and B, C [B, T, N], from the convolved x [B, T, D]."""
        s = self.spec
        selection = self.x_proj(xc)
        if self.mid_all_reduce is not None:
            self.mid_all_reduce(selection)  # in place: the sum over the GPUs' channels
        dt, B_, C_ = selection.split((s.dt_rank, s.state_size, s.state_size), -1)
        if s.dt_bc_norms:
            dt = F.rms_norm(dt, (s.dt_rank,), self.dt_norm, NORM_EPS)
            B_ = F.rms_norm(B_, (s.state_size,), self.b_norm, NORM_EPS)
            C_ = F.rms_norm(C_, (s.state_size,), self.c_norm, NORM_EPS)
        return F.softplus(self.dt_proj(dt)), B_, C_

    def _output(self, y: torch.Tensor, xc: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The D skip and the gate on y [B, T, D], in place, then the output projection."""
        y = y.to(z.dtype).addcmul_(xc, self.D.to(z.dtype))
        return self.out_proj(y.mul_(F.silu(z)))

    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        xs, z = self.in_proj(x).chunk(2, -1)
        conv_out, history = causal_conv(xs, self.conv_weight, self.conv_bias)
        xc = F.silu(conv_out, inplace=True)
        dt, B_, C_ = self._select(xc)
        y, state = selective_scan(xc, dt, -self.A_log.exp(), B_, C_, self.spec.chunk)
        del dt, B_, C_
        if write_cache:
            self.keep("ssm_state", state)
            self.keep("conv_state", history)
        return self._output(y, xc, z)

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        xs, z = self.in_proj(x).chunk(2, -1)
        conv_out, history = conv_step(xs, self.conv_weight, self.conv_bias, self.conv_state[:b])
        xc = F.silu(conv_out)
        dt, B_, C_ = self._select(xc)
        y, state = scan_step(xc[:, 0], dt[:, 0], -self.A_log.exp(), B_[:, 0], C_[:, 0], self.ssm_state[:b])
        self.keep("ssm_state", state)
        self.keep("conv_state", history)
        return self._output(y.unsqueeze(1), xc, z)

    @classmethod
    def shard_state(cls, spec: Mamba, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
        """Rank `rank`'s d_inner/tp channels: their rows of x and z in in_proj, of the convolution, dt_proj, A_log
        and D, and their columns of x_proj and out_proj; the norms whole; out_proj's bias on rank 0 only (the
        ranks' outputs are summed)."""
        d = spec.d_inner
        width, first = d // tp, rank * (d // tp)

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[first:first + width]

        out = {**state, "conv_weight": rows(state["conv_weight"]), "dt_proj.weight": rows(state["dt_proj.weight"]),
               "dt_proj.bias": rows(state["dt_proj.bias"]), "A_log": rows(state["A_log"]), "D": rows(state["D"]),
               "x_proj.weight": state["x_proj.weight"][:, first:first + width],
               "out_proj.weight": state["out_proj.weight"][:, first:first + width]}
        for name in ("in_proj.weight", "in_proj.bias"):
            if name in state:
                out[name] = torch.cat([rows(half) for half in state[name].chunk(2)])
        if "conv_bias" in state:
            out["conv_bias"] = rows(state["conv_bias"])
        if "out_proj.bias" in state and rank:
            out["out_proj.bias"] = torch.zeros_like(state["out_proj.bias"])
        return out
