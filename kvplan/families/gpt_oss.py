"""gpt-oss: GQA with q/k/v/o biases, 128-token sliding and full layers alternating, a learned attention sink
per head, and a mixture of experts on every layer.

The sinks add one logit per head to each softmax: no cache, no matrix product (so no counted FLOPs), and
n_heads weights per layer that the counts here leave out (1,536 in gpt-oss-20b). The experts' biases
(gate/up and down, about 0.03% of the weights) are left out too.
"""

from __future__ import annotations

from ..model import Model
from .fields import Fields, every_layer_window, moe_feed_forward
from .llama import dense_attention

MODEL_TYPES = ("gpt_oss",)


def model(f: Fields, common: dict) -> Model:
    active_key = "num_experts_per_tok" if "num_experts_per_tok" in f.config else "experts_per_token"
    # intermediate_size is each expert's width; no layer is dense.
    ffn = moe_feed_forward(f, f.need("num_local_experts"), active_key, 0, moe_intermediate_key="intermediate_size")
    return Model(attention=dense_attention(f, qkv_bias=True), ffn=ffn,
                 layer_windows=every_layer_window(f, common["n_layers"]),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
