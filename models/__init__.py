"""Real PyTorch models for every attention kind kvplan estimates, with static (preallocated) KV caches.

    from kvplan.models import build, sliced
    net = build(sliced(get_preset("llama-3.1-8b"), 2), max_batch=1, max_context=8192, device="cuda")
    net.prefill(tokens); net.decode(next_tokens, input_pos)

Weights are random (no download), or a TPA paper checkpoint's (from_t6); the layout of every cache is the
one kvplan.kinds describes, so `net.cache_bytes_allocated()` equals the estimate's kv_cache_bytes(max_batch, max_context).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kvplan.model import Model
from kvplan.units import InputError

from .common import cache_storage
from .t6 import from_t6
from .transformer import Transformer


def sliced(desc: Model, layers: int) -> Model:
    """The model with only its first `layers` layers (their windows, mixers and dense/MoE split kept)."""
    if not 1 <= layers <= desc.n_layers:
        raise InputError(f"{desc.name}: cannot take {layers} of its {desc.n_layers} layers")
    return replace(desc, n_layers=layers, layer_windows=desc.layer_windows[:layers],
                   layer_mixers=desc.layer_mixers[:layers])


def build(desc: Model, *, max_batch: int, max_context: int, dtype: torch.dtype = torch.bfloat16,
          device: str | torch.device = "cpu", kv_dtype: str | None = "bf16", seed: int = 0) -> Transformer:
    """A decoder for `desc` with random weights and caches for max_batch sequences of max_context tokens.

    kv_dtype: cache storage ('bf16', 'fp16', 'fp32', 'fp8'; None: the compute dtype). Weights are drawn
    N(0, 1/fan_in) so activations stay of order one at any width and depth.
    """
    if max_batch < 1 or max_context < 1:
        raise InputError(f"max_batch and max_context must be positive, not {max_batch} and {max_context}")
    cache_dtype, _ = cache_storage(kv_dtype, dtype)
    device = torch.device(device)
    net = Transformer(desc, max_batch, max_context, cache_dtype, device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 2:
                fan_in = 1 if "tok_embeddings" in name else param.size(1)
                param.normal_(0.0, fan_in ** -0.5, generator=generator)
    return net.eval()


__all__ = ["build", "from_t6", "sliced", "Transformer"]
