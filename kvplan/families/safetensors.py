"""Exact weight bytes of a local checkpoint folder from its *.safetensors headers, without loading a tensor.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON mapping each
tensor name to its dtype, shape and data offsets (and an optional "__metadata__"). Only those bytes are read.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

from ..units import InputError

DTYPE_BITS = {"F64": 64, "I64": 64, "U64": 64, "F32": 32, "I32": 32, "U32": 32, "F16": 16, "BF16": 16, "I16": 16,
              "U16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I8": 8, "U8": 8, "BOOL": 8, "F4": 4}
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit


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
            return json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: safetensors header is not valid JSON ({error})") from None


def weight_bytes_by_dtype(folder: str | Path) -> dict[str, int]:
    """Bytes of tensor data per safetensors dtype over every *.safetensors file in `folder` ({} if none)."""
    totals: dict[str, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        for name, tensor in read_header(path).items():
            if name == "__metadata__":
                continue
            dtype = tensor.get("dtype")
            if dtype not in DTYPE_BITS:
                raise InputError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
            totals[dtype] = totals.get(dtype, 0) + (prod(tensor.get("shape", [])) * DTYPE_BITS[dtype] + 7) // 8
    return totals
