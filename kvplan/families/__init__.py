"""Build a Model from a Hugging Face config.json (a dict, a file, or a folder holding one), with no network.

One module per model family, each declaring the `model_type` values it reads (MODEL_TYPES) and a
`model(fields, common)` that builds the Model; FAMILIES maps every model_type to its family's builder.
Both the transformers 4.x and 5.x forms load: multimodal wrappers keep the language model under
`text_config` (Gemma 3, Llama 4, Qwen2.5-VL and Qwen3-VL as transformers 5 writes them, Mistral 3); fields
the wrapper holds beside it (tie_word_embeddings, quantization_config, torch_dtype/dtype) apply to it too.
A model_type no family knows loads as a Llama-like dense decoder when it has the standard fields, with one
warning saying so.
The Model carries how the checkpoint stores its weights (Model.weights): from a local folder's *.safetensors
headers where it holds them (exact), else from config.json's quantization_config (families.quantization).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

from ..model import Model
from ..units import InputError
from . import (deepseek, falcon_h1, gemma, glm, gpt_oss, jamba, llama, llama4, mixtral, modernbert, nemotron_h,
               qwen_moe, qwen_next, t6)
from .fields import Fields, common_fields
from .quantization import checkpoint_weights
from .safetensors import safetensors_weights

FAMILIES = {model_type: module.model
            for module in (llama, gemma, mixtral, qwen_moe, gpt_oss, glm, llama4, deepseek, modernbert, t6, qwen_next,
                           nemotron_h, falcon_h1, jamba)
            for model_type in module.MODEL_TYPES}
SUPPORTED = tuple(FAMILIES)
CLASS_DEFAULTS = {**gemma.CLASS_DEFAULTS}

# What an unknown model_type needs to load as a Llama-like dense decoder.
STANDARD_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def language_model_config(config: dict) -> dict:
    """The language model's fields: text_config with the wrapper's other fields beneath it."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        return config
    outer = {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "audio_config")}
    return {**outer, **{k: v for k, v in text.items() if v is not None},
            "model_type": text.get("model_type", config.get("model_type"))}


def model_from_config(config: dict, name: str = "config.json", source: str = "") -> Model:
    """Model from a config.json dict. Raises InputError on a missing or malformed field."""
    if not isinstance(config, dict):
        raise InputError(f"{name}: config must be a JSON object")
    config = language_model_config(config)
    model_type = str(config.get("model_type", "")).lower()
    if not model_type:
        raise InputError(f"{name}: config lacks required field 'model_type'")
    build = FAMILIES.get(model_type) or _assumed_dense(config, model_type, name)
    defaults = CLASS_DEFAULTS.get(model_type)
    if defaults:
        config = {**defaults, **{k: v for k, v in config.items() if v is not None}}
    f = Fields(config, name)
    model = build(f, common_fields(f, model_type, name, source))
    weights = checkpoint_weights(config, model, name)
    return replace(model, weights=weights) if weights else model


def _assumed_dense(config: dict, model_type: str, name: str):
    missing = [key for key in STANDARD_FIELDS if config.get(key) is None]
    if missing:
        raise InputError(f"{name}: model_type {model_type!r} is not supported and the config lacks "
                         f"{', '.join(missing)} to read it as a dense decoder; supported: {', '.join(SUPPORTED)}")
    moe = [key for key in ("num_experts", "num_local_experts", "n_routed_experts") if config.get(key)]
    if moe:
        raise InputError(f"{name}: model_type {model_type!r} is not supported and has {moe[0]}: kvplan does not "
                         f"guess how its experts are laid out; supported: {', '.join(SUPPORTED)}")
    warnings.warn(f"{name}: model_type {model_type!r} is not a known family; read as a Llama-like decoder "
                  f"(dense SwiGLU feed-forward, GQA from num_key_value_heads, full attention on every layer "
                  f"unless layer_types or sliding_window say otherwise)", stacklevel=3)
    return llama.model


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
    """Model from a config.json file or a folder holding one, with the weight bytes of the *.safetensors files
    beside it where there are any."""
    config, where = load_config_file(path)
    model = model_from_config(config, name=where, source=f"local file {where}")
    weights = safetensors_weights(Path(where).parent, model)
    return replace(model, weights=weights) if weights else model
