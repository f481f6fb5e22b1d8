"""Mixtral: Mistral's attention with a mixture of experts on every layer (8 experts, 2 per token)."""

from __future__ import annotations

from ..model import Model
from .fields import Fields, every_layer_window, moe_feed_forward
from .llama import dense_attention

MODEL_TYPES = ("mixtral",)


def model(f: Fields, common: dict) -> Model:
    # Mixtral's intermediate_size is each expert's width; no layer is dense.
    ffn = moe_feed_forward(f, f.need("num_local_experts"), "num_experts_per_tok", 0,
                           moe_intermediate_key="intermediate_size")
    return Model(attention=dense_attention(f), ffn=ffn, layer_windows=every_layer_window(f, common["n_layers"]),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
