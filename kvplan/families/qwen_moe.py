"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B) and Qwen3-MoE: routed experts on every decoder_sparse_step-th layer
except those in mlp_only_layers; Qwen2-MoE adds one shared expert (shared_expert_intermediate_size wide)."""

from __future__ import annotations

from ..model import FeedForward, Model
from .fields import Fields, moe_feed_forward
from .llama import QKV_BIAS, dense_attention, windows

MODEL_TYPES = ("qwen2_moe", "qwen3_moe", "qwen3_vl_moe", "qwen3_vl_moe_text")


def qwen_feed_forward(f: Fields, n_layers: int) -> FeedForward:
    """Routed experts (num_experts) on every decoder_sparse_step-th layer but mlp_only_layers, and a shared expert
    shared_expert_intermediate_size wide where set; dense (intermediate_size) without experts."""
    shared = f.get("shared_expert_intermediate_size", 0)
    return moe_feed_forward(f, f.get("num_experts", 0), "num_experts_per_tok", f.get("intermediate_size", 0),
                            moe_step=f.get("decoder_sparse_step", 1, minimum=1),
                            dense_layer_ids=f.layer_ids("mlp_only_layers", n_layers),
                            n_shared_experts=1 if shared else 0, shared_intermediate=shared)


def model(f: Fields, common: dict) -> Model:
    model_type = common["architecture"]
    ffn = qwen_feed_forward(f, common["n_layers"])
    return Model(attention=dense_attention(f, qkv_bias=model_type in QKV_BIAS), ffn=ffn,
                 layer_windows=windows(f, model_type, common["n_layers"]),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
