"""ModernBERT: an encoder with global attention every few layers and a local window elsewhere."""

from __future__ import annotations

from ..model import FeedForward, Model
from .fields import Fields
from .llama import dense_attention

MODEL_TYPES = ("modernbert",)


def model(f: Fields, common: dict) -> Model:
    every, window = f.need("global_attn_every_n_layers"), f.need("local_attention")
    windows = tuple(None if i % every == 0 else window for i in range(common["n_layers"]))
    return Model(attention=dense_attention(f), ffn=FeedForward(f.need("intermediate_size")), layer_windows=windows,
                 tie_embeddings=f.get("tie_word_embeddings", True, bool), is_encoder=True, **common)
