"""A model id (ORG/NAME) resolved to its folder in the local Hugging Face cache, with no network.

The cache is the one huggingface_hub writes (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub),
read through the layout huggingface_hub documents: models--ORG--NAME/refs/main names the revision whose
folder snapshots/REVISION/ holds the files. Reading the folders needs neither huggingface_hub nor a network.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..units import InputError


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def cached_snapshot(model_id: str) -> Path:
    """The newest cached snapshot folder of `model_id` that holds a config.json; InputError if none."""
    repo = hub_cache() / ("models--" + model_id.replace("/", "--"))
    snapshots = sorted((p for p in (repo / "snapshots").glob("*") if (p / "config.json").exists()),
                       key=lambda p: (p / "config.json").stat().st_mtime, reverse=True)
    ref = repo / "refs" / "main"
    if ref.exists() and (repo / "snapshots" / ref.read_text().strip() / "config.json").exists():
        return repo / "snapshots" / ref.read_text().strip()
    if snapshots:
        return snapshots[0]
    raise InputError(f"{model_id}: not a preset, a local path, or a model in the Hugging Face cache ({hub_cache()}); "
                     f"download its config with `huggingface-cli download {model_id} config.json`")
