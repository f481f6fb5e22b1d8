"""Llama 4 (Scout, Maverick) language model: chunked attention on three layers of four, global attention
without RoPE on every fourth, and routed experts plus one shared expert on every interleave_moe_layer_step-th
layer (the others dense, intermediate_size_mlp wide).

A chunked layer attends within fixed attention_chunk_size-token chunks and keeps at most one chunk of cache
(Model.chunked). The layers that use RoPE are the chunked ones (no_rope_layers[i] == 1; absent or empty:
every layer but each fourth, as transformers' Llama4TextConfig fills it in).
"""

from __future__ import annotations

from ..model import Model
from ..units import InputError
from .fields import Fields, layer_spans, moe_feed_forward
from .llama import dense_attention

MODEL_TYPES = ("llama4", "llama4_text")


def chunk_pattern(f: Fields, n_layers: int) -> tuple[int | None, ...]:
    listed = layer_spans(f, n_layers, {"chunked_attention": "attention_chunk_size", "full_attention": None})
    if listed is not None:
        return listed
    chunk = f.need("attention_chunk_size")
    rope_layers = f.config.get("no_rope_layers") or [int((i + 1) % 4 != 0) for i in range(n_layers)]
    if not isinstance(rope_layers, list) or any(flag not in (0, 1) for flag in rope_layers):
        raise InputError(f"{f.where}: no_rope_layers must be a list of 0 and 1, one per layer")
    if len(rope_layers) != n_layers:
        raise InputError(f"{f.where}: no_rope_layers has {len(rope_layers)} entries for {n_layers} layers")
    return tuple(chunk if uses_rope else None for uses_rope in rope_layers)


def model(f: Fields, common: dict) -> Model:
    n_layers, step = common["n_layers"], f.get("interleave_moe_layer_step", 1, minimum=1)
    dense_ids = ()
    if f.config.get("moe_layers") is not None:  # an explicit list overrides the step
        moe_layers = set(f.layer_ids("moe_layers", n_layers))
        step, dense_ids = 1, tuple(i for i in range(n_layers) if i not in moe_layers)
    expert = f.need("intermediate_size")
    ffn = moe_feed_forward(f, f.need("num_local_experts"), "num_experts_per_tok",
                           f.get("intermediate_size_mlp", expert, minimum=1), moe_step=step, dense_layer_ids=dense_ids,
                           n_shared_experts=1, moe_intermediate_key="intermediate_size")
    return Model(attention=dense_attention(f), ffn=ffn, layer_windows=chunk_pattern(f, n_layers), chunked=True,
                 tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)
