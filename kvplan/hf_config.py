"""Build a Model from a Hugging Face config.json (a dict, a file, or a folder holding one), with no network.

Supported model_type values: llama, mistral, qwen2, qwen3, gemma2, gemma3 / gemma3_text, deepseek_v3,
deepseek_v32, modernbert, and t6 (our own key names for the TPA paper's models and its baselines, see presets.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from .kinds import DSA, MLA, TPA, DenseAttention
from .model import FeedForward, Model
from .units import InputError

# Values transformers' config classes fill in when config.json leaves a field out (google/gemma-3-27b-pt's
# text_config, for one, omits vocab_size and max_position_embeddings).
_CLASS_DEFAULTS = {
    "gemma2": {"head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096},
    "gemma3_text": {"head_dim": 256, "vocab_size": 262208, "max_position_embeddings": 131072, "sliding_window": 4096,
                    "sliding_window_pattern": 6},
}
_CLASS_DEFAULTS["gemma3"] = _CLASS_DEFAULTS["gemma3_text"]

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "deepseek_v3",
             "deepseek_v32", "modernbert", "t6")


class _Fields:
    """Reads required and optional fields, naming the missing one in the error."""

    def __init__(self, config: dict, where: str):
        self.config, self.where = config, where

    def need(self, key: str, kind=int):
        if key not in self.config or self.config[key] is None:
            raise InputError(f"{self.where}: config lacks required field {key!r}")
        return self._cast(key, self.config[key], kind)

    def get(self, key: str, default=None, kind=int):
        value = self.config.get(key)
        return default if value is None else self._cast(key, value, kind)

    def _cast(self, key, value, kind):
        if kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"{self.where}: field {key!r} must be true or false, not {value!r}")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
                raise InputError(f"{self.where}: field {key!r} must be a non-negative whole number, not {value!r}")
            return int(value)
        return value


def model_from_config(config: dict, name: str = "config.json", source: str = "") -> Model:
    """Model from a config.json dict. Raises InputError on a missing or malformed field."""
    if not isinstance(config, dict):
        raise InputError(f"{name}: config must be a JSON object")
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers (Gemma 3) keep the LM inside
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    model_type = str(config.get("model_type", "")).lower()
    if not model_type:
        raise InputError(f"{name}: config lacks required field 'model_type'")
    if model_type not in SUPPORTED:
        raise InputError(f"{name}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    defaults = _CLASS_DEFAULTS.get(model_type)
    if defaults:
        config = {**defaults, **{k: v for k, v in config.items() if v is not None}}
    f = _Fields(config, name)
    n_layers, d_model = f.need("num_hidden_layers"), f.need("hidden_size")
    n_heads = f.need("num_attention_heads")
    if min(n_layers, d_model, n_heads) == 0:
        raise InputError(f"{name}: num_hidden_layers, hidden_size and num_attention_heads must be positive")
    for key in ("vocab_size", "intermediate_size"):
        if key in config and f.get(key) == 0:
            raise InputError(f"{name}: {key} must be positive")
    common = dict(name=name, n_layers=n_layers, d_model=d_model, vocab_size=f.need("vocab_size"),
                  max_positions=f.get("max_position_embeddings"), architecture=model_type, source=source)
    head_dim = f.get("head_dim") or d_model // n_heads

    if model_type in ("deepseek_v3", "deepseek_v32"):
        mla = MLA(n_heads=n_heads, kv_lora_rank=f.need("kv_lora_rank"), qk_rope_head_dim=f.need("qk_rope_head_dim"),
                  qk_nope_head_dim=f.need("qk_nope_head_dim"), v_head_dim=f.need("v_head_dim"),
                  q_lora_rank=f.get("q_lora_rank", 0))
        attention = mla
        if model_type == "deepseek_v32":
            attention = DSA(mla, index_n_heads=f.need("index_n_heads"), index_head_dim=f.need("index_head_dim"),
                            index_topk=f.need("index_topk"))
        n_experts = f.get("n_routed_experts", 0)
        if n_experts and not 0 < f.need("num_experts_per_tok") <= n_experts:
            raise InputError(f"{name}: num_experts_per_tok ({f.need('num_experts_per_tok')}) must be between 1 and "
                             f"n_routed_experts ({n_experts})")
        ffn = FeedForward(intermediate=f.need("intermediate_size"), n_experts=n_experts,
                          n_active_experts=f.need("num_experts_per_tok") if n_experts else 0,
                          n_shared_experts=f.get("n_shared_experts", 0),
                          moe_intermediate=f.need("moe_intermediate_size") if n_experts else 0,
                          n_dense_layers=f.get("first_k_dense_replace", 0) if n_experts else None)
        return Model(attention=attention, ffn=ffn, tie_embeddings=f.get("tie_word_embeddings", False, bool), **common)

    if model_type == "t6":
        return _t6_model(f, common, n_heads, head_dim)

    n_kv_heads = f.get("num_key_value_heads", n_heads)
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise InputError(f"{name}: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads ({n_kv_heads})")
    qkv_bias = model_type == "qwen2" or f.get("attention_bias", False, bool)
    attention = DenseAttention(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, qkv_bias=qkv_bias)
    windows = _layer_windows(model_type, f, n_layers)
    tie = f.get("tie_word_embeddings", model_type in ("gemma2", "gemma3", "gemma3_text", "modernbert"), bool)
    return Model(attention=attention, ffn=FeedForward(f.need("intermediate_size")), layer_windows=windows,
                 tie_embeddings=tie, is_encoder=model_type == "modernbert", **common)


def _t6_model(f: _Fields, common: dict, n_heads: int, head_dim: int) -> Model:
    """The TPA paper's models as its code (tensorgi/TPA) trains them: field "attention" is "tpa" (T6, the
    default; q_rank, k_rank, v_rank), "dense" (the llama-mha/-gqa baselines; num_key_value_heads) or "mla"
    (llama-mla; DeepSeek's field names). All of them turn RoPE the reference's way and use unweighted block
    norms (kvplan.model.Model.rope_convention, block_norm)."""
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


def _layer_windows(model_type: str, f: _Fields, n_layers: int) -> tuple[int | None, ...]:
    if model_type == "modernbert":
        every, window = f.need("global_attn_every_n_layers"), f.need("local_attention")
        return tuple(None if i % every == 0 else window for i in range(n_layers))
    layer_types = f.config.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        if len(layer_types) != n_layers:
            raise InputError(f"{f.where}: layer_types has {len(layer_types)} entries for {n_layers} layers")
        unknown = sorted({str(kind) for kind in layer_types} - {"sliding_attention", "full_attention"})
        if unknown:
            raise InputError(f"{f.where}: layer_types holds {', '.join(unknown)}; kvplan knows sliding_attention "
                             f"and full_attention")
        window = f.need("sliding_window")
        return tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    if model_type == "gemma2":
        window = f.need("sliding_window")
        return tuple(window if i % 2 == 0 else None for i in range(n_layers))
    if model_type in ("gemma3", "gemma3_text"):
        window, pattern = f.need("sliding_window"), f.get("sliding_window_pattern", 6)
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(n_layers))
    if model_type == "mistral":
        window = f.get("sliding_window")
        return (window,) * n_layers if window else (None,) * n_layers
    if model_type in ("qwen2", "qwen3") and f.get("use_sliding_window", False, bool):
        # Qwen applies the window from layer max_window_layers upward.
        window, first = f.need("sliding_window"), f.get("max_window_layers", n_layers)
        return tuple(window if i >= first else None for i in range(n_layers))
    return (None,) * n_layers


def load_config_file(path: str | Path) -> tuple[dict, str]:
    """Read config.json from a file or a folder; returns (dict, the file's path)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        return json.loads(path.read_text()), str(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None


def model_from_file(path: str | Path) -> Model:
    config, where = load_config_file(path)
    return model_from_config(config, name=where, source=f"local file {where}")
