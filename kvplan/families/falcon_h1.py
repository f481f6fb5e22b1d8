"""Falcon-H1: attention and a Mamba-2 mixer side by side in every layer (one norm before both, their outputs
summed), then a SwiGLU MLP. Mamba's width is mamba_d_ssm (default mamba_expand x hidden_size) in mamba_n_heads
heads of mamba_d_head; its gated norm is there when mamba_rms_norm is set. The muP multipliers scale
activations and change no count.
"""

from __future__ import annotations

from ..kinds import Mamba2
from ..model import FeedForward, Model
from ..units import InputError
from .fields import Fields
from .llama import dense_attention

MODEL_TYPES = ("falcon_h1",)


def mamba2(f: Fields) -> Mamba2:
    width = f.get("mamba_d_ssm") or f.get("mamba_expand", 2) * f.need("hidden_size")
    heads = f.need("mamba_n_heads")
    head_dim = f.config.get("mamba_d_head", "auto")
    head_dim = width // heads if head_dim == "auto" else f.need("mamba_d_head")
    if heads * head_dim != width:
        raise InputError(f"{f.where}: mamba_n_heads x mamba_d_head ({heads} x {head_dim}) must equal the Mamba "
                         f"width {width} (mamba_d_ssm)")
    return Mamba2(n_heads=heads, head_dim=head_dim, state_size=f.need("mamba_d_state"),
                  n_groups=f.get("mamba_n_groups", 1), conv_kernel=f.get("mamba_d_conv", 4),
                  chunk=f.get("mamba_chunk_size", 256), conv_bias=f.get("mamba_conv_bias", True, bool),
                  gated_norm=f.get("mamba_rms_norm", False, bool))


def model(f: Fields, common: dict) -> Model:
    return Model(attention=dense_attention(f), ffn=FeedForward(f.need("intermediate_size")), recurrent=mamba2(f),
                 layer_mixers=("parallel",) * common["n_layers"],
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
