"""GLM-4 (glm4: dense) and GLM-4.5 (glm4_moe: dense first layers, then routed and one shared expert).

Both rotate only part of each head (partial_rotary_factor), which changes no cache, weight or FLOP count;
their multi-token-prediction layers (num_nextn_predict_layers) are left out, as for DeepSeek-V3.
"""

from __future__ import annotations

from ..model import Model
from .fields import Fields, every_layer_window, moe_feed_forward
from .llama import dense_attention

MODEL_TYPES = ("glm4", "glm4_moe")


def model(f: Fields, common: dict) -> Model:
    ffn = moe_feed_forward(f, f.get("n_routed_experts", 0), "num_experts_per_tok", f.need("intermediate_size"),
                           n_dense_layers=f.get("first_k_dense_replace", 0), n_shared_experts=f.get("n_shared_experts", 0))
    return Model(attention=dense_attention(f), ffn=ffn, layer_windows=every_layer_window(f, common["n_layers"]),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
