"""Storage formats for weights and KV caches, with the scale overhead of quantized formats.

A quantized cache stores, besides its elements, one scale (and for int4 a zero point) per group of
`group_size` consecutive elements of each cached vector. fp8 (e4m3) uses one scale per tensor, as vLLM's
fp8 KV cache does, so its per-token overhead is zero and fp8 is exactly half of bf16.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .units import InputError, ceil_div


@dataclass(frozen=True)
class StorageFormat:
    name: str
    bits: int  # bits per element
    group_size: int = 0  # elements sharing one scale; 0 = one scale per tensor (no per-token overhead)
    group_overhead_bytes: int = 0  # bytes of scale (+ zero point) per group

    def vector_bytes(self, elements: int) -> int:
        """Bytes to store one cached vector of `elements` values, scales included."""
        data = ceil_div(elements * self.bits, 8)
        if self.group_size:
            data += ceil_div(elements, self.group_size) * self.group_overhead_bytes
        return data

    @property
    def bytes_per_element(self) -> float:
        return self.bits / 8


FORMATS: dict[str, StorageFormat] = {
    "fp32": StorageFormat("fp32", 32),
    "bf16": StorageFormat("bf16", 16),
    "fp16": StorageFormat("fp16", 16),
    "fp8": StorageFormat("fp8", 8),
    # Symmetric int8 with one fp16 scale per 64 elements of a vector.
    "int8": StorageFormat("int8", 8, group_size=64, group_overhead_bytes=2),
    # Asymmetric int4 (KIVI-style) with an fp16 scale and an fp16 zero point per 32 elements.
    "int4": StorageFormat("int4", 4, group_size=32, group_overhead_bytes=4),
}


def storage_format(name: str, what: str = "kv_dtype") -> StorageFormat:
    """The format called `name`; `what` names the argument in the message."""
    key = str(name).strip().lower()
    if key not in FORMATS:
        near = difflib.get_close_matches(key, FORMATS, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise InputError(f"{what} {name!r} is not a storage format{hint}; choose one of {', '.join(FORMATS)}",
                         what if what.isidentifier() else None)
    return FORMATS[key]
