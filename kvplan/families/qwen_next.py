"""Qwen3-Next and Qwen3.5: Gated DeltaNet layers, with gated full attention on every full_attention_interval-th
layer (or as layer_types lists "linear_attention" and "full_attention"), and routed experts with a shared one
(Qwen3-Next, Qwen3.5-MoE) or a dense feed-forward (Qwen3.5 dense). The recurrent state is stored in
mamba_ssm_dtype where the config sets it (Qwen3.5: float32). The multi-token-prediction layers
(mtp_num_hidden_layers), the query/key norms and the shared expert's gate (d_model weights each) are left out
of the counts.
"""

from __future__ import annotations

from dataclasses import replace

from ..kinds import GatedDeltaNet
from ..model import Model, hybrid_layers
from .fields import Fields, listed_layer_types
from .llama import dense_attention
from .qwen_moe import qwen_feed_forward

MODEL_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
LAYER_TYPES = {"linear_attention": "recurrent", "full_attention": "attention"}


def gated_delta_net(f: Fields) -> GatedDeltaNet:
    return GatedDeltaNet(n_heads=f.need("linear_num_value_heads"), n_key_heads=f.need("linear_num_key_heads"),
                         key_head_dim=f.need("linear_key_head_dim"), head_dim=f.need("linear_value_head_dim"),
                         conv_kernel=f.get("linear_conv_kernel_dim", 4), state_dtype=f.storage("mamba_ssm_dtype"))


def layer_mixers(f: Fields, n_layers: int) -> tuple[str, ...]:
    layer_types = listed_layer_types(f, n_layers, LAYER_TYPES)
    if layer_types is None:
        return hybrid_layers(n_layers, f.get("full_attention_interval", 4))
    return tuple(LAYER_TYPES[kind] for kind in layer_types)


def model(f: Fields, common: dict) -> Model:
    attention = replace(dense_attention(f), output_gate=f.get("attn_output_gate", True, bool))
    return Model(attention=attention, ffn=qwen_feed_forward(f, common["n_layers"]), recurrent=gated_delta_net(f),
                 layer_mixers=layer_mixers(f, common["n_layers"]),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
