"""Build a Model from a Hugging Face config.json (a dict, a file, or a folder holding one), with no network.

One module per model family, each declaring the `model_type` values it reads (MODEL_TYPES) and a
`model(fields, common)` that builds the Model; FAMILIES maps every model_type to its family's builder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model import Model
from ..units import InputError
from . import deepseek, gemma, llama, modernbert, t6
from .fields import Fields, common_fields

FAMILIES = {model_type: module.model for module in (llama, gemma, deepseek, modernbert, t6)
            for model_type in module.MODEL_TYPES}
SUPPORTED = tuple(FAMILIES)
CLASS_DEFAULTS = {**gemma.CLASS_DEFAULTS}


def model_from_config(config: dict, name: str = "config.json", source: str = "") -> Model:
    """Model from a config.json dict. Raises InputError on a missing or malformed field."""
    if not isinstance(config, dict):
        raise InputError(f"{name}: config must be a JSON object")
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers (Gemma 3) keep the LM inside
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    model_type = str(config.get("model_type", "")).lower()
    if not model_type:
        raise InputError(f"{name}: config lacks required field 'model_type'")
    if model_type not in FAMILIES:
        raise InputError(f"{name}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    defaults = CLASS_DEFAULTS.get(model_type)
    if defaults:
        config = {**defaults, **{k: v for k, v in config.items() if v is not None}}
    f = Fields(config, name)
    return FAMILIES[model_type](f, common_fields(f, model_type, name, source))


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
