"""Llama-like dense decoders: Llama 3, Mistral (Nemo, Small), Qwen2/2.5, Qwen3, Phi-3/3.5, and the language
models of Qwen2-VL/2.5-VL/3-VL (GQA, SwiGLU, optional sliding windows).

Phi-3 fuses q, k and v (and gate and up) into one matrix each: the same weights as separate ones.
"""

from __future__ import annotations

from ..kinds import DenseAttention
from ..model import FeedForward, Model
from ..units import InputError
from .fields import SLIDING_OR_FULL, Fields, every_layer_window, layer_spans

# Qwen2's language model (and the VL models built on it) adds biases to q, k and v.
QKV_BIAS = ("qwen2", "qwen2_moe", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl",
               "qwen2_5_vl_text", "qwen3_vl", "qwen3_vl_text")


def dense_attention(f: Fields, qkv_bias: bool = False) -> DenseAttention:
    """GQA/MQA/MHA from num_attention_heads, num_key_value_heads (default: as many as heads) and head_dim."""
    n_heads = f.need("num_attention_heads")
    n_kv_heads = f.get("num_key_value_heads", n_heads, minimum=1)
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise InputError(f"{f.where}: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads "
                         f"({n_kv_heads})")
    qkv_bias = qkv_bias or f.get("attention_bias", False, bool)
    return DenseAttention(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=f.head_dim(), qkv_bias=qkv_bias)


def windows(f: Fields, model_type: str, n_layers: int) -> tuple[int | None, ...]:
    if model_type.startswith("qwen"):
        listed = layer_spans(f, n_layers, SLIDING_OR_FULL)
        if listed is not None:
            return listed
        if not f.get("use_sliding_window", False, bool):
            return (None,) * n_layers
        # Qwen applies the window from layer max_window_layers upward.
        window, first = f.need("sliding_window"), f.get("max_window_layers", n_layers, maximum=n_layers)
        return tuple(window if i >= first else None for i in range(n_layers))
    return every_layer_window(f, n_layers)


def model(f: Fields, common: dict) -> Model:
    model_type, n_layers = common["architecture"], common["n_layers"]
    attention = dense_attention(f, qkv_bias=model_type in QKV_BIAS)
    return Model(attention=attention, ffn=FeedForward(f.need("intermediate_size")),
                 layer_windows=windows(f, model_type, n_layers),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
