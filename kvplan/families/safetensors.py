"""Exact weight bytes of a local checkpoint folder from its *.safetensors headers, without loading a tensor.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON mapping each
tensor name to its dtype, shape and data offsets (and an optional "__metadata__"). Only those bytes are read.
Each tensor's bytes go to the weight group (Model.weight_groups) its module path names; the bytes of tensors no
group names, or of a group the model has no weights in (a vision tower, a multi-token-prediction layer's extra
modules), are spread over all weights, so the groups together hold exactly the files' bytes.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from math import prod
from pathlib import Path

from ..dtypes import WeightsFormat, gemm_dtype
from ..model import Model
from ..units import InputError

DTYPE_BITS = {"F64": 64, "I64": 64, "U64": 64, "F32": 32, "I32": 32, "U32": 32, "F16": 16, "BF16": 16, "I16": 16,
              "U16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I8": 8, "U8": 8, "BOOL": 8, "F4": 4}
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit
MAX_DIMENSION = 2**40  # per dimension of a tensor's shape: far above any checkpoint's, bounds the arithmetic
INDEX = "model.safetensors.index.json"
# Model.weight_groups' group of a tensor, by the module path in its name (Llama, Qwen, Mixtral, DeepSeek, gpt-oss,
# Llama 4 and hybrids' names); the first match wins.
GROUP_PATTERNS = (
    ("lm_head", re.compile(r"(^|\.)lm_head\.")),
    ("embed_tokens", re.compile(r"(^|\.)(embed_tokens|embeddings|wte)\.")),
    ("mlp.shared_expert", re.compile(r"\.shared_experts?[._]")),
    ("mlp.experts", re.compile(r"\.experts\.")),
    ("mlp.gate", re.compile(r"\.(mlp|block_sparse_moe|feed_forward)\.(gate|router)\.")),
    ("self_attn", re.compile(r"\.(self_attn|attn|attention|linear_attn|mixer|mamba)\.")),
    ("mlp", re.compile(r"\.(mlp|feed_forward|block_sparse_moe)\.")),
    ("norm", re.compile(r"norm")),
)


def read_header(path: Path) -> dict:
    """The JSON header of one .safetensors file."""
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise InputError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise InputError(f"{path}: safetensors header of {length} bytes exceeds the format's 100 MiB limit")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    return header


def _shape(value, path: Path, name: str) -> list[int]:
    """A tensor's shape from a header: whole numbers >= 0, at most MAX_DIMENSION each."""
    if not isinstance(value, list) or not all(isinstance(n, int) and not isinstance(n, bool)
                                              and 0 <= n <= MAX_DIMENSION for n in value):
        raise InputError(f"{path}: tensor {name!r} has shape {value!r}, not a list of whole numbers "
                         f"in [0, {MAX_DIMENSION}]")
    return value


def tensor_bytes(folder: str | Path) -> list[tuple[str, str, int]]:
    """(name, dtype, bytes of data) of every tensor in every *.safetensors file in `folder` ([] if none)."""
    tensors = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        for name, tensor in read_header(path).items():
            if name == "__metadata__":
                continue
            dtype = tensor.get("dtype") if isinstance(tensor, dict) else None
            if dtype not in DTYPE_BITS:
                raise InputError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
            shape = _shape(tensor.get("shape", []), path, name)
            tensors.append((name, dtype, (prod(shape) * DTYPE_BITS[dtype] + 7) // 8))
    return tensors


def weight_bytes_by_dtype(folder: str | Path) -> dict[str, int]:
    """Bytes of tensor data per safetensors dtype over every *.safetensors file in `folder` ({} if none)."""
    totals: dict[str, int] = {}
    for _, dtype, size in tensor_bytes(folder):
        totals[dtype] = totals.get(dtype, 0) + size
    return totals


def group_of(tensor_name: str) -> str | None:
    """The weight group (Model.weight_groups) a tensor's name places it in, or None."""
    return next((group for group, pattern in GROUP_PATTERNS if pattern.search(tensor_name)), None)


def missing_shards(folder: Path) -> list[str]:
    """Files the folder's model.safetensors.index.json names that it does not hold."""
    index = folder / INDEX
    if not index.exists():
        return []
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise InputError(f"{index}: not a valid safetensors index ({error})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise InputError(f"{index}: weight_map must map tensor names to file names")
    return sorted({f for f in weight_map.values() if not (folder / f).exists()})


def safetensors_weights(folder: str | Path, model: Model) -> WeightsFormat | None:
    """How the checkpoint in `folder` stores `model`'s weights, from its *.safetensors headers: each group's bytes
    per weight, exact in total (None where the folder holds no safetensors file, or only some of the shards its
    index names: a warning says so)."""
    folder = Path(folder)
    missing = missing_shards(folder)
    tensors = tensor_bytes(folder) if not missing else []
    if missing and any(folder.glob("*.safetensors")):
        warnings.warn(f"{folder}: {len(missing)} of the safetensors shards {INDEX} names are missing (e.g. "
                      f"{missing[0]}); weight bytes from config.json instead", stacklevel=3)
    if not tensors:
        return None
    params = model.weight_groups()
    placed: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    for name, dtype, size in tensors:
        group = group_of(name)
        group = group if params.get(group) else ""  # "": spread over all weights
        placed[group] = placed.get(group, 0) + size
        by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    spread = placed.pop("", 0) / sum(params.values())
    dtypes = sorted(by_dtype, key=by_dtype.get, reverse=True)
    return WeightsFormat("+".join(dtypes), "safetensors headers", spread,
                         tuple((g, placed.get(g, 0) / n + spread) for g, n in params.items() if n),
                         gemm_dtype("fp8" if dtypes[0].startswith("F8") else dtypes[0].lower()))
