"""Llama-like dense decoders: Llama, Mistral, Qwen2, Qwen3 (GQA, SwiGLU, optional sliding windows)."""

from __future__ import annotations

from ..kinds import DenseAttention
from ..model import FeedForward, Model
from ..units import InputError
from .fields import Fields

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def dense_attention(f: Fields, qkv_bias: bool = False) -> DenseAttention:
    """GQA/MQA/MHA from num_attention_heads, num_key_value_heads (default: as many as heads) and head_dim."""
    n_heads = f.need("num_attention_heads")
    n_kv_heads = f.get("num_key_value_heads", n_heads)
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise InputError(f"{f.where}: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads "
                         f"({n_kv_heads})")
    qkv_bias = qkv_bias or f.get("attention_bias", False, bool)
    return DenseAttention(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=f.head_dim(), qkv_bias=qkv_bias)


def layer_types_windows(f: Fields, n_layers: int) -> tuple[int | None, ...] | None:
    """Per-layer windows from `layer_types` (None where the config has no such list)."""
    layer_types = f.config.get("layer_types")
    if not (isinstance(layer_types, list) and layer_types):
        return None
    if len(layer_types) != n_layers:
        raise InputError(f"{f.where}: layer_types has {len(layer_types)} entries for {n_layers} layers")
    unknown = sorted({str(kind) for kind in layer_types} - {"sliding_attention", "full_attention"})
    if unknown:
        raise InputError(f"{f.where}: layer_types holds {', '.join(unknown)}; kvplan knows sliding_attention "
                         f"and full_attention")
    window = f.need("sliding_window")
    return tuple(window if kind == "sliding_attention" else None for kind in layer_types)


def windows(f: Fields, model_type: str, n_layers: int) -> tuple[int | None, ...]:
    listed = layer_types_windows(f, n_layers)
    if listed is not None:
        return listed
    if model_type == "mistral":
        window = f.get("sliding_window")
        return (window,) * n_layers if window else (None,) * n_layers
    if model_type in ("qwen2", "qwen3") and f.get("use_sliding_window", False, bool):
        # Qwen applies the window from layer max_window_layers upward.
        window, first = f.need("sliding_window"), f.get("max_window_layers", n_layers)
        return tuple(window if i >= first else None for i in range(n_layers))
    return (None,) * n_layers


def model(f: Fields, common: dict) -> Model:
    model_type, n_layers = common["architecture"], common["n_layers"]
    attention = dense_attention(f, qkv_bias=model_type == "qwen2")
    return Model(attention=attention, ffn=FeedForward(f.need("intermediate_size")),
                 layer_windows=windows(f, model_type, n_layers),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
