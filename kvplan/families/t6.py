"""T6 (the TPA paper's models and its baselines): our own config.json key names, see presets.py."""

from __future__ import annotations

from ..kinds import MLA, TPA, DenseAttention
from ..model import FeedForward, Model
from ..units import InputError
from .fields import Fields

MODEL_TYPES = ("t6",)


def model(f: Fields, common: dict) -> Model:
    """The TPA paper's models as its code (tensorgi/TPA) trains them: field "attention" is "tpa" (T6, the
    default; q_rank, k_rank, v_rank), "dense" (the llama-mha/-gqa baselines; num_key_value_heads) or "mla"
    (llama-mla; DeepSeek's field names). All of them turn RoPE the reference's way and use unweighted block
    norms (kvplan.model.Model.rope_convention, block_norm)."""
    n_heads, head_dim = f.need("num_attention_heads"), f.head_dim()
    kind = f.get("attention", "tpa", str)
    if kind == "tpa":
        attention = TPA(n_heads=n_heads, head_dim=head_dim, q_rank=f.need("q_rank"), k_rank=f.need("k_rank"),
                        v_rank=f.need("v_rank"))
    elif kind == "dense":
        n_kv_heads = f.get("num_key_value_heads", n_heads)
        if n_kv_heads == 0 or n_heads % n_kv_heads:
            raise InputError(f"{f.where}: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads "
                             f"({n_kv_heads})")
        attention = DenseAttention(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim)
    elif kind == "mla":
        attention = MLA(n_heads=n_heads, kv_lora_rank=f.need("kv_lora_rank"), qk_rope_head_dim=f.need("qk_rope_head_dim"),
                        qk_nope_head_dim=f.need("qk_nope_head_dim"), v_head_dim=f.need("v_head_dim"),
                        q_lora_rank=f.get("q_lora_rank", 0))
    else:
        raise InputError(f"{f.where}: field 'attention' must be tpa, dense or mla, not {kind!r}")
    return Model(attention=attention, ffn=FeedForward(f.need("intermediate_size")),
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), rope_convention="t6",
                 block_norm="rmsnorm-unweighted", **common)
