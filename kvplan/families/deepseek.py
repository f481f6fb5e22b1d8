"""DeepSeek-V3 (MLA, MoE) and DeepSeek-V3.2 (DSA: MLA with a top-k key indexer)."""

from __future__ import annotations

from ..kinds import DSA, MLA
from ..model import FeedForward, Model
from ..units import InputError
from .fields import Fields

MODEL_TYPES = ("deepseek_v3", "deepseek_v32")


def model(f: Fields, common: dict) -> Model:
    mla = MLA(n_heads=f.need("num_attention_heads"), kv_lora_rank=f.need("kv_lora_rank"),
              qk_rope_head_dim=f.need("qk_rope_head_dim"), qk_nope_head_dim=f.need("qk_nope_head_dim"),
              v_head_dim=f.need("v_head_dim"), q_lora_rank=f.get("q_lora_rank", 0))
    attention = mla
    if common["architecture"] == "deepseek_v32":
        attention = DSA(mla, index_n_heads=f.need("index_n_heads"), index_head_dim=f.need("index_head_dim"),
                        index_topk=f.need("index_topk"))
    n_experts = f.get("n_routed_experts", 0)
    if n_experts and not 0 < f.need("num_experts_per_tok") <= n_experts:
        raise InputError(f"{f.where}: num_experts_per_tok ({f.need('num_experts_per_tok')}) must be between 1 and "
                         f"n_routed_experts ({n_experts})")
    ffn = FeedForward(intermediate=f.need("intermediate_size"), n_experts=n_experts,
                      n_active_experts=f.need("num_experts_per_tok") if n_experts else 0,
                      n_shared_experts=f.get("n_shared_experts", 0),
                      moe_intermediate=f.need("moe_intermediate_size") if n_experts else 0,
                      n_dense_layers=f.get("first_k_dense_replace", 0) if n_experts else None)
    return Model(attention=attention, ffn=ffn, tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
