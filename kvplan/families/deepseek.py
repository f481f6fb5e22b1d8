"""DeepSeek-V2/V2-Lite and V3 (MLA, MoE after the first dense layers) and DeepSeek-V3.2 (DSA: MLA with a top-k
key indexer). V2-Lite has no query compression (q_lora_rank null)."""

from __future__ import annotations

from ..kinds import DSA, MLA
from ..model import Model
from ..units import InputError
from .fields import Fields, moe_feed_forward

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2")


def model(f: Fields, common: dict) -> Model:
    mla = MLA(n_heads=f.need("num_attention_heads"), kv_lora_rank=f.need("kv_lora_rank"),
              qk_rope_head_dim=f.need("qk_rope_head_dim"), qk_nope_head_dim=f.need("qk_nope_head_dim"),
              v_head_dim=f.need("v_head_dim"), q_lora_rank=f.get("q_lora_rank", 0))
    attention = mla
    if common["architecture"] == "deepseek_v32":
        attention = DSA(mla, index_n_heads=f.need("index_n_heads"), index_head_dim=f.need("index_head_dim"),
                        index_topk=f.need("index_topk"))
    if f.get("moe_layer_freq", 1) != 1:  # every published DeepSeek model has 1
        raise InputError(f"{f.where}: moe_layer_freq {f.get('moe_layer_freq')} is not supported; kvplan reads 1")
    ffn = moe_feed_forward(f, f.get("n_routed_experts", 0), "num_experts_per_tok", f.need("intermediate_size"),
                           n_dense_layers=f.get("first_k_dense_replace", 0), n_shared_experts=f.get("n_shared_experts", 0))
    return Model(attention=attention, ffn=ffn, tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
