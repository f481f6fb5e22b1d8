"""T6 (the TPA paper's models): our own config.json key names for its tensor product attention, see presets.py."""

from __future__ import annotations

from ..kinds import TPA
from ..model import FeedForward, Model
from .fields import Fields

MODEL_TYPES = ("t6",)


def model(f: Fields, common: dict) -> Model:
    n_heads, head_dim = f.need("num_attention_heads"), f.head_dim()
    attention = TPA(n_heads=n_heads, head_dim=head_dim, q_rank=f.need("q_rank"), k_rank=f.need("k_rank"),
                    v_rank=f.need("v_rank"))
    return Model(attention=attention, ffn=FeedForward(f.need("intermediate_size")),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
