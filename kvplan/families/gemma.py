"""Gemma 2 and Gemma 3: GQA with local (sliding) and global layers interleaved, tied embeddings."""

from __future__ import annotations

from ..model import FeedForward, Model
from .fields import SLIDING_OR_FULL, Fields, layer_spans
from .llama import dense_attention

MODEL_TYPES = ("gemma2", "gemma3", "gemma3_text")

# Values transformers' config classes fill in when config.json leaves a field out (google/gemma-3-27b-pt's
# text_config, for one, omits vocab_size and max_position_embeddings).
CLASS_DEFAULTS = {
    "gemma2": {"head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096},
    "gemma3_text": {"head_dim": 256, "vocab_size": 262208, "max_position_embeddings": 131072, "sliding_window": 4096,
                    "sliding_window_pattern": 6},
}
CLASS_DEFAULTS["gemma3"] = CLASS_DEFAULTS["gemma3_text"]


def windows(f: Fields, model_type: str, n_layers: int) -> tuple[int | None, ...]:
    listed = layer_spans(f, n_layers, SLIDING_OR_FULL)
    if listed is not None:
        return listed
    if model_type == "gemma2":  # local layers first: 0, 2, 4, ...
        window = f.need("sliding_window")
        return tuple(window if i % 2 == 0 else None for i in range(n_layers))
    window, pattern = f.need("sliding_window"), f.get("sliding_window_pattern", 6, minimum=1)
    return tuple(None if (i + 1) % pattern == 0 else window for i in range(n_layers))


def model(f: Fields, common: dict) -> Model:
    return Model(attention=dense_attention(f), ffn=FeedForward(f.need("intermediate_size")),
                 layer_windows=windows(f, common["architecture"], common["n_layers"]),
                 tie_embeddings=f.get("tie_word_embeddings", True, bool), **common)
