"""Gated DeltaNet (kvplan.kinds.gdn): chunked gated delta rule in prefill, one recurrence step per decoded token.

State per sequence: `recurrent_state` [max_batch, heads, key_head_dim, head_dim] in the kind's state dtype and
`conv_state` [max_batch, kernel - 1, conv channels] in the compute dtype. in_proj_qkvz's rows are q, k (key
heads), v and z (value heads), each block head after head; q, k and v are the convolution's channels.

The chunked form (as flash-linear-attention's chunk_gated_delta_rule, and transformers'
torch_chunk_gated_delta_rule): within a chunk of C tokens with cumulative log decay G_i and decay matrix
D_ij = exp(G_i - G_j) (j <= i), the delta rule's C updates are one unit lower-triangular system
(I + strictly_lower((beta K) K^T * D)) [U | W] = [beta V | beta K exp(G)]; then per chunk, with the incoming
state S: V_new = U - W S, out = exp(G) Q S + ((Q K^T) * D) V_new, S <- exp(G_C) S + (exp(G_C - G) K)^T V_new.
Where flash-linear-attention (the fla-core package) is installed and the tensors are on CUDA in fp16/bf16, its
Triton kernels run the same computation instead (`fla_serves`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.kinds import GatedDeltaNet

from .common import Rope, head_block
from .recurrent import StateMixin, accumulation, causal_conv, conv_step, gated_rms_norm_, state_dtype

try:  # optional: flash-linear-attention's Triton kernels, used on CUDA only
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
except ImportError:  # pragma: no cover - depends on the environment
    fla_chunk = None


def fla_serves(x: torch.Tensor) -> bool:
    """Whether prefill runs flash-linear-attention's chunked kernel (installed, CUDA, half precision)."""
    return fla_chunk is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


def chunk_gated_delta_rule(q, k, v, g, beta, chunk: int, state: torch.Tensor | None = None):
    """q, k [B, T, H, dk] (per value head, normalised and scaled), v [B, T, H, dv], log decay g and write strength
    beta [B, T, H], the incoming state [B, H, dk, dv] (None: zeros) -> (out [B, T, H, dv] in v's dtype, final
    state in the accumulation dtype).

    Chunk after chunk (the last one may be shorter), each chunk's slice taken to the accumulation dtype on its
    own: one chunk's C x C matrices and copies exist at a time (GatedDeltaNet.prefill_scratch_bytes)."""
    B, T, H, dk = k.shape
    acc = accumulation(q.dtype)
    S = q.new_zeros(B, H, dk, v.size(-1), dtype=acc) if state is None else state.to(acc)
    out = torch.empty_like(v)
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        qi, ki, vi, gi, bi = (t[:, start:end].movedim(1, 2).to(acc) for t in (q, k, v, g, beta))  # [B, H, C, ...]
        gi = gi.cumsum(-1)  # cumulative log decay inside the chunk
        causal = torch.ones(end - start, end - start, dtype=torch.bool, device=q.device).tril()
        decay = (gi.unsqueeze(-1) - gi.unsqueeze(-2)).masked_fill_(~causal, float("-inf")).exp_()  # [B, H, C, C]
        k_beta = ki * bi.unsqueeze(-1)
        system = (k_beta @ ki.transpose(-1, -2)).mul_(decay)  # its strictly lower part; the solve's diagonal is 1
        rhs = torch.cat([vi * bi.unsqueeze(-1), k_beta.mul_(gi.exp().unsqueeze(-1))], dim=-1)
        u, w = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True).split((vi.size(-1), dk), -1)
        del system, rhs, k_beta, vi
        v_new = u - w @ S
        scores = (qi @ ki.transpose(-1, -2)).mul_(decay)
        out[:, start:end] = ((qi * gi.exp().unsqueeze(-1)) @ S + scores @ v_new).movedim(1, 2)
        last = gi[..., -1:]
        S = S * last.exp().unsqueeze(-1)
        S += (ki * (last - gi).exp().unsqueeze(-1)).transpose(-1, -2) @ v_new
    return out, S


def gated_delta_step(q, k, v, g, beta, state: torch.Tensor):
    """One token: q, k [B, H, dk], v [B, H, dv], g, beta [B, H], state [B, H, dk, dv] -> (out [B, H, dv], new
    state). S <- exp(g) S; S <- S + k (beta (v - S^T k))^T; out = S^T q: three products of 2 dk dv FLOPs."""
    acc = accumulation(q.dtype)
    q, k, v, g, beta = (t.to(acc) for t in (q, k, v, g, beta))
    S = state.to(acc) * g.exp()[..., None, None]
    remembered = (k.unsqueeze(-2) @ S).squeeze(-2)  # S^T k: [B, H, dv]
    delta = (v - remembered) * beta.unsqueeze(-1)
    S = S + k.unsqueeze(-1) @ delta.unsqueeze(-2)
    return (q.unsqueeze(-2) @ S).squeeze(-2), S


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dimension: one new tensor the size of x."""
    return x * torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().add_(eps))


class GatedDeltaNetLayer(nn.Module, StateMixin):
    def __init__(self, spec: GatedDeltaNet, d_model: int, window: int | None, max_batch: int, max_context: int,
                 rope: Rope, cache_dtype: torch.dtype, **factory):
        super().__init__()
        self.spec = spec
        hk, h, dk, dv = spec.n_key_heads, spec.n_heads, spec.key_head_dim, spec.head_dim
        self.conv_dim = spec.conv_channels()
        self.in_proj_qkvz = nn.Linear(d_model, 2 * hk * dk + 2 * h * dv, bias=False, **factory)
        self.in_proj_ba = nn.Linear(d_model, 2 * h, bias=False, **factory)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, spec.conv_kernel, **factory))
        self.A_log = nn.Parameter(torch.zeros(h, **factory))
        self.dt_bias = nn.Parameter(torch.ones(h, **factory))
        self.norm_weight = nn.Parameter(torch.ones(dv, **factory))
        self.out_proj = nn.Linear(h * dv, d_model, bias=False, **factory)
        compute, device = factory.get("dtype") or torch.get_default_dtype(), factory.get("device")
        self.hold("recurrent_state", (max_batch, h, dk, dv), state_dtype(spec, compute), device)
        self.hold("conv_state", (max_batch, spec.conv_kernel - 1, self.conv_dim), compute, device)

    def _per_value_head(self, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Key-head vectors [B, T, key heads * dk] normalised, scaled and repeated to the value heads they serve."""
        s = self.spec
        t = l2_normalize(t.unflatten(-1, (s.n_key_heads, -1))).mul_(scale)
        group = s.n_heads // s.n_key_heads
        return t.repeat_interleave(group, 2) if group > 1 else t

    def _inputs(self, conv_out: torch.Tensor, ba: torch.Tensor):
        """q, k (per value head), v, the log decay g and beta from the convolved q/k/v channels (silu applied in
        place)."""
        s = self.spec
        q, k, v = F.silu(conv_out, inplace=True).split((s.n_key_heads * s.key_head_dim,) * 2 + (s.n_heads * s.head_dim,), -1)
        q = self._per_value_head(q, s.key_head_dim ** -0.5)
        k = self._per_value_head(k)
        b, a = ba.split(s.n_heads, -1)
        acc = accumulation(a.dtype)  # the log decay in fp32 (fp64 for an fp64 model), as the kernels take it
        g = -self.A_log.to(acc).exp() * F.softplus(a.to(acc) + self.dt_bias.to(acc))
        return q, k, v.unflatten(-1, (s.n_heads, -1)), g, torch.sigmoid(b)

    def _output(self, o: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        o = gated_rms_norm_(o.to(z.dtype), z.unflatten(-1, (self.spec.n_heads, -1)), self.norm_weight)
        return self.out_proj(o.flatten(-2))

    def prefill(self, x: torch.Tensor, write_cache: bool = True) -> torch.Tensor:
        qkvz = self.in_proj_qkvz(x)
        conv_out, history = causal_conv(qkvz[..., :self.conv_dim], self.conv_weight, None)
        q, k, v, g, beta = self._inputs(conv_out, self.in_proj_ba(x))
        del conv_out
        if fla_serves(x):
            o, state = fla_chunk(q, k, v.contiguous(), g, beta, scale=1.0, output_final_state=True)
        else:
            o, state = chunk_gated_delta_rule(q, k, v, g, beta, self.spec.chunk)
        del q, k, v
        if write_cache:
            self.keep("recurrent_state", state)
            self.keep("conv_state", history)
        return self._output(o, qkvz[..., self.conv_dim:])

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        qkvz = self.in_proj_qkvz(x)
        conv_out, history = conv_step(qkvz[..., :self.conv_dim], self.conv_weight, None, self.conv_state[:B])
        q, k, v, g, beta = self._inputs(conv_out, self.in_proj_ba(x))
        o, state = gated_delta_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], self.recurrent_state[:B])
        self.keep("recurrent_state", state)
        self.keep("conv_state", history)
        return self._output(o.unsqueeze(1), qkvz[..., self.conv_dim:])

    @classmethod
    def shard_state(cls, spec: GatedDeltaNet, state: dict[str, torch.Tensor], tp: int, rank: int
                    ) -> dict[str, torch.Tensor]:
        """Rank `rank`'s n_key_heads/tp key heads and the n_heads/tp value heads they serve: their rows of the
        projections and the convolution, their A_log and dt_bias, their columns of out_proj; the norm's weight
        (shared by all heads) whole."""
        hk, h, dk, dv = spec.n_key_heads, spec.n_heads, spec.key_head_dim, spec.head_dim
        kh, vh = hk // tp, h // tp
        kf, vf = rank * kh, rank * vh

        def qkv_rows(weight: torch.Tensor, with_z: bool) -> torch.Tensor:
            parts = weight.split((hk * dk, hk * dk, h * dv) + ((h * dv,) if with_z else ()))
            return torch.cat([head_block(parts[0], hk, kf, kh), head_block(parts[1], hk, kf, kh)]
                             + [head_block(p, h, vf, vh) for p in parts[2:]])

        b, a = state["in_proj_ba.weight"].split(h)
        return {**state, "in_proj_qkvz.weight": qkv_rows(state["in_proj_qkvz.weight"], True),
                "conv_weight": qkv_rows(state["conv_weight"], False),
                "in_proj_ba.weight": torch.cat([b[vf:vf + vh], a[vf:vf + vh]]),
                "A_log": state["A_log"][vf:vf + vh], "dt_bias": state["dt_bias"][vf:vf + vh],
                "out_proj.weight": head_block(state["out_proj.weight"], h, vf, vh, dim=1)}
