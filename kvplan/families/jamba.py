"""Jamba (AI21: Jamba-v0.1, Jamba-1.5-Mini and -Large): Mamba-1 layers with attention on every attn_layer_period-th
layer (from attn_layer_offset), and a mixture of experts in place of the dense SwiGLU MLP on every
expert_layer_period-th layer (from expert_layer_offset), as transformers' JambaConfig lays them out
(layers_block_type, layers_num_experts). Each expert is intermediate_size wide, as the dense MLPs are; one
expert (num_experts 1) means every layer is dense. The Mamba layers are d_inner = mamba_expand x hidden_size
channels wide with a state of mamba_d_state per channel and mamba_dt_rank ("auto": ceil(hidden_size / 16)).

The attention layers have no positional embedding: order reaches them through the Mamba layers. kvplan's
estimate counts no RoPE work for any layer (it is elementwise); kvplan.models' torch attention rotates all the
same, which changes its values, not its bytes or FLOPs.
"""

from __future__ import annotations

from ..kinds import Mamba
from ..model import Model
from ..units import InputError, ceil_div
from .fields import Fields, moe_feed_forward
from .llama import dense_attention

MODEL_TYPES = ("jamba",)


def mamba(f: Fields) -> Mamba:
    hidden = f.need("hidden_size")
    dt_rank = f.config.get("mamba_dt_rank", "auto")
    dt_rank = ceil_div(hidden, 16) if dt_rank == "auto" else f.need("mamba_dt_rank")
    return Mamba(d_inner=f.get("mamba_expand", 2, minimum=1) * hidden, state_size=f.get("mamba_d_state", 16, minimum=1),
                 dt_rank=dt_rank, conv_kernel=f.get("mamba_d_conv", 4, minimum=1),
                 conv_bias=f.get("mamba_conv_bias", True, bool), proj_bias=f.get("mamba_proj_bias", False, bool))


def every(f: Fields, period_key: str, offset_key: str, period: int, offset: int, n_layers: int) -> tuple[int, ...]:
    """Layers i with i % period == offset, the two read from the config (JambaConfig's defaults otherwise)."""
    period, offset = f.get(period_key, period, minimum=1), f.get(offset_key, offset)
    if offset >= period:
        raise InputError(f"{f.where}: {offset_key} ({offset}) must be smaller than {period_key} ({period})")
    return tuple(range(offset, n_layers, period))


def model(f: Fields, common: dict) -> Model:
    n_layers = common["n_layers"]
    attention_layers = set(every(f, "attn_layer_period", "attn_layer_offset", 8, 4, n_layers))
    expert_layers = set(every(f, "expert_layer_period", "expert_layer_offset", 2, 1, n_layers))
    experts = f.get("num_experts", 16, minimum=1)
    ffn = moe_feed_forward(f, experts if experts > 1 else 0, "num_experts_per_tok", f.need("intermediate_size"),
                           n_dense_layers=0, moe_intermediate_key="intermediate_size",
                           dense_layer_ids=tuple(i for i in range(n_layers) if i not in expert_layers))
    mixers = tuple("attention" if i in attention_layers else "recurrent" for i in range(n_layers))
    return Model(attention=dense_attention(f), ffn=ffn, recurrent=mamba(f), layer_mixers=mixers,
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
