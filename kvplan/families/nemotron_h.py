"""Nemotron-H (and Nemotron 3): blocks of one kind each, as hybrid_override_pattern spells them, one character a
layer: "M" a Mamba-2 mixer, "*" attention, "-" an MLP, "E" a mixture of experts; each block has its own norm.
The MLPs and experts are ungated, with a squared ReLU (mlp_hidden_act relu2). The recurrent state is stored in
mamba_ssm_cache_dtype where the config sets it (Nemotron 3: float32).
"""

from __future__ import annotations

from dataclasses import replace

from ..kinds import Mamba2
from ..model import Model
from ..units import InputError
from .fields import Fields, moe_feed_forward
from .llama import dense_attention

MODEL_TYPES = ("nemotron_h",)
BLOCKS = {"M": "recurrent", "*": "attention", "-": "none", "E": "none"}


def mamba2(f: Fields) -> Mamba2:
    return Mamba2(n_heads=f.need("mamba_num_heads"), head_dim=f.need("mamba_head_dim"),
                  state_size=f.need("ssm_state_size"), n_groups=f.get("n_groups", 1), conv_kernel=f.get("conv_kernel", 4),
                  chunk=f.get("chunk_size", 128), state_dtype=f.storage("mamba_ssm_cache_dtype"),
                  conv_bias=f.get("use_conv_bias", True, bool))


def model(f: Fields, common: dict) -> Model:
    pattern = f.need("hybrid_override_pattern", str)
    if not isinstance(pattern, str) or len(pattern) != common["n_layers"] or not set(pattern) <= set(BLOCKS):
        raise InputError(f"{f.where}: hybrid_override_pattern must give one of {', '.join(BLOCKS)} for each of "
                         f"the {common['n_layers']} layers")
    if f.get("mlp_hidden_act", "relu2", str) != "relu2" or f.get("moe_latent_size"):
        raise InputError(f"{f.where}: kvplan reads Nemotron-H with squared-ReLU MLPs and no latent MoE projection")
    blocks = range(len(pattern))
    experts = f.get("n_routed_experts", 0) if "E" in pattern else 0
    ffn = moe_feed_forward(f, experts, "num_experts_per_tok", f.get("intermediate_size", 0),
                           dense_layer_ids=tuple(i for i in blocks if pattern[i] == "-"),
                           n_shared_experts=f.get("n_shared_experts", 0),
                           shared_intermediate=f.get("moe_shared_expert_intermediate_size", 0))
    ffn = replace(ffn, absent_layer_ids=tuple(i for i in blocks if pattern[i] in "M*"), gated=False)
    attention = dense_attention(f)
    if f.get("attention_head_dim"):  # Nemotron-H's name for head_dim
        attention = replace(attention, head_dim=f.get("attention_head_dim"))
    return Model(attention=attention, ffn=ffn, recurrent=mamba2(f), layer_mixers=tuple(BLOCKS[c] for c in pattern),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
