"""The decoder: embedding, layers of (RMSNorm, attention, RMSNorm, SwiGLU or MoE feed-forward), LM head.

Built from a kvplan.model.Model, layer by layer (attention kind, per-layer window, or chunk where the model
is chunked, dense or MoE feed-forward), with random weights. Every method runs without autograd.

Activation memory (kvplan.estimator.Estimator.activation_bytes_per_gpu): the residual stream is updated in
place, each block holds its normed input while its attention or feed-forward runs, and attention layers
free their projections before the output projection, so the live set per token is residual + normed input
+ the block's intermediates. Where the measured peak can differ from that model: the last token's logits
exist in the compute dtype before their fp32 copy; a window shorter than the prompt adds a fixed
per-chunk band mask and expanded K/V chunk (attend_prefill); DSA's indexer holds 2 more bytes per (query,
key) pair than its fp32 scores while scoring; MoE runs its experts one at a time, and an expert busier than
uniform routing's k / E of the tokens holds more than FeedForward.prefill_peak_bytes counts.
Each kind's activation_elements counts what its prefill holds at the attention kernel.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.kinds import AttentionKind
from kvplan.model import FeedForward, Model

from .common import Rope, block_norm


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int, **factory):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False, **factory)
        self.w_up = nn.Linear(d_model, hidden, bias=False, **factory)
        self.w_down = nn.Linear(hidden, d_model, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Live at the peak: silu(gate), up and their product (FeedForward.prefill_peak_bytes' 3 x hidden).
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class ReLU2MLP(nn.Module):
    """Ungated MLP with a squared ReLU (Nemotron-H): down(relu(up(x))^2)."""

    def __init__(self, d_model: int, hidden: int, **factory):
        super().__init__()
        self.w_up = nn.Linear(d_model, hidden, bias=False, **factory)
        self.w_down = nn.Linear(hidden, d_model, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.relu(self.w_up(x)).square_())


def mlp(ffn: FeedForward, d_model: int, hidden: int, **factory) -> nn.Module:
    return (SwiGLU if ffn.gated else ReLU2MLP)(d_model, hidden, **factory)


class MoE(nn.Module):
    """Softmax router picking n_active_experts of n_experts per token (weights renormalised), plus shared
    experts as one always-on SwiGLU of FeedForward.shared_width(). A plain per-expert loop: it reads which
    tokens chose each expert on the host, so an MoE layer cannot be captured in a CUDA graph."""

    def __init__(self, d_model: int, ffn: FeedForward, **factory):
        super().__init__()
        self.k = ffn.n_active_experts
        self.router = nn.Linear(d_model, ffn.n_experts, bias=False, **factory)
        self.experts = nn.ModuleList(mlp(ffn, d_model, ffn.moe_intermediate, **factory) for _ in range(ffn.n_experts))
        self.shared = mlp(ffn, d_model, ffn.shared_width(), **factory) if ffn.shared_width() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.view(-1, x.size(-1))
        weights, chosen = torch.softmax(self.router(flat), dim=-1).topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = self.shared(flat) if self.shared is not None else torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        return out.view_as(x)


def layer_class(attention: AttentionKind) -> type[nn.Module]:
    """The torch layer a kind names (AttentionKind.layer, "module:Class" inside kvplan.models)."""
    module, _, name = attention.layer.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def mixer_layers(desc: Model, index: int, *args, **factory) -> tuple[nn.Module | None, nn.Module | None]:
    """Layer `index`'s (attention, recurrent) torch layers, None where Model.layer_mixers gives it none; `args` are
    every layer class's (max_batch, max_context, rope, cache_dtype)."""
    mixer, d = desc.layer_mixer(index), desc.d_model
    attention = recurrent = None
    if mixer in ("attention", "parallel"):
        attention = layer_class(desc.attention)(desc.attention, d, desc.layer_windows[index], *args,
                                                chunked=desc.chunked, **factory)
    if mixer in ("recurrent", "parallel"):
        recurrent = layer_class(desc.recurrent)(desc.recurrent, d, None, *args, **factory)
    return attention, recurrent


class Block(nn.Module):
    """One layer: a norm and its mixers (attention, a recurrent layer, or both on the same normed input with their
    outputs summed), then a norm and the feed-forward; a part the layer lacks (Model.layer_mixers "none",
    FeedForward.absent_layer_ids) is absent with its norm."""

    def __init__(self, desc: Model, index: int, max_batch: int, max_context: int, rope: Rope,
                 cache_dtype: torch.dtype, **factory):
        super().__init__()
        d = desc.d_model
        self.attention, self.recurrent = mixer_layers(desc, index, max_batch, max_context, rope, cache_dtype,
                                                      **factory)
        self.mixers = [m for m in (self.attention, self.recurrent) if m is not None]
        self.attention_norm = block_norm(desc.block_norm, d, **factory) if self.mixers else None
        self.ffn_norm = block_norm(desc.block_norm, d, **factory) if desc.ffn.has_layer(index) else None
        if self.ffn_norm is None:
            self.ffn = None
        elif desc.ffn.is_moe_layer(index):
            self.ffn = MoE(d, desc.ffn, **factory)
        else:
            self.ffn = mlp(desc.ffn, d, desc.ffn.intermediate, **factory)

    def _mix(self, x: torch.Tensor, run) -> None:
        if self.mixers:
            h = self.attention_norm(x)
            for mixer in self.mixers:
                x.add_(run(mixer, h))

    def prefill(self, x: torch.Tensor, write_cache: bool) -> torch.Tensor:
        self._mix(x, lambda mixer, h: mixer.prefill(h, write_cache))
        return x.add_(self.ffn(self.ffn_norm(x))) if self.ffn is not None else x

    def decode(self, x: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        self._mix(x, lambda mixer, h: mixer.decode(h, input_pos))
        return x.add_(self.ffn(self.ffn_norm(x))) if self.ffn is not None else x


class Transformer(nn.Module):
    def __init__(self, desc: Model, max_batch: int, max_context: int, cache_dtype: torch.dtype, **factory):
        super().__init__()
        self.desc, self.max_batch, self.max_context = desc, max_batch, max_context
        self.tok_embeddings = nn.Embedding(desc.vocab_size, desc.d_model, **factory)
        self.rope = Rope(desc.attention.rope_dim, max_context, device=factory.get("device"),
                         convention=desc.rope_convention)
        self.layers = nn.ModuleList(Block(desc, i, max_batch, max_context, self.rope, cache_dtype, **factory)
                                    for i in range(desc.n_layers))
        self.norm = block_norm(desc.block_norm, desc.d_model, **factory)
        self.lm_head = None if desc.tie_embeddings else nn.Linear(desc.d_model, desc.vocab_size, bias=False, **factory)
        if self.lm_head is not None and torch.device(factory.get("device") or "cpu").type == "cuda":
            # The head multiplies one row a sequence (a prefill's last position, a decode step's token): its weight
            # [V, d_model] is stored as its transpose's rows, the layout cuBLAS reads faster for such products on an
            # H100 (DeepSeek-V3's at batch 16: 656 -> 612 us, the other weights' not all; decode_layouts-h100.csv).
            self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach().t().contiguous().t())

    @property
    def graph_safe(self) -> bool:
        """Whether decode can be captured in a CUDA graph (MoE layers read routing on the host)."""
        return not any(isinstance(block.ffn, MoE) for block in self.layers)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model] -> fp32 logits [B, T, V]. With T = 1 (a decode step, a prefill's last position) the
        final norm takes RMSNorm's one-kernel path, as the blocks' norms do in decode."""
        weight = self.tok_embeddings.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(self.norm(x), weight)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or the model's fp64

    def _check(self, tokens: torch.Tensor, length: int) -> None:
        if tokens.dim() != 2 or tokens.size(0) > self.max_batch or length > self.max_context:
            raise ValueError(f"tokens {tuple(tokens.shape)}: need [batch <= {self.max_batch}, "
                             f"length <= {self.max_context}]")

    def _hidden(self, tokens: torch.Tensor, write_cache: bool) -> torch.Tensor:
        """Every block over LongTensor[B, T] from position 0 -> the last hidden state [B, T, d_model]."""
        self._check(tokens, tokens.size(1))
        x = self.tok_embeddings(tokens)
        for block in self.layers:
            x = block.prefill(x, write_cache=write_cache)
        return x

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reference: one pass over LongTensor[B, T] with no cache -> logits [B, T, V] (fp32)."""
        return self._logits(self._hidden(tokens, write_cache=False))

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Fill cache positions 0..T-1 of rows 0..B-1 from LongTensor[B, T]; logits [B, V] of the last position."""
        return self._logits(self._hidden(tokens, write_cache=True)[:, -1:])[:, 0]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """One token per sequence, tokens [B, 1] at position input_pos (LongTensor[1], on the device) ->
        logits [B, V]. Static shapes and no host reads (unless MoE): capturable in a CUDA graph."""
        x = self.tok_embeddings.weight[tokens]  # nn.Embedding's index_select takes 4x longer for a few rows
        for block in self.layers:
            x = block.decode(x, input_pos)
        return self._logits(x[:, -1:])[:, 0]

    def cache_tensors(self) -> list[torch.Tensor]:
        """Every layer's cache buffers, recurrent layers' state included."""
        return [buf for block in self.layers for mixer in block.mixers for buf in mixer.cache_buffers()]

    def cache_bytes_allocated(self) -> int:
        return sum(buf.nbytes for buf in self.cache_tensors())

    def cache_bytes_live(self, context: int) -> int:
        """Bytes holding the tokens (and recurrent state) of `context`-token sequences in all max_batch rows."""
        return sum(mixer.cache_bytes_live(context) for block in self.layers for mixer in block.mixers)

    def reset_cache(self) -> None:
        for block in self.layers:
            for mixer in block.mixers:
                mixer.reset_cache()
