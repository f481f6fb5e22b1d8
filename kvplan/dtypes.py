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


def weight_storage(name: str | None) -> StorageFormat | None:
    """The weight format called `name`, or None for "auto" (or None): the checkpoint's own (WeightsFormat)."""
    if name is None or str(name).strip().lower() == "auto":
        return None
    try:
        return storage_format(name, "weight_dtype")
    except InputError as error:
        raise InputError(f"{error}, or auto (as the checkpoint stores them)", error.argument) from None


def gemm_dtype(storage: str) -> str:
    """The dtype linear layers multiply in for weights stored as `storage`: fp8 weights meet fp8 activations (fp8
    serving quantizes the activations too: DeepSeek-V3's block-scaled GEMMs, vLLM's fp8 checkpoints); weight-only
    formats (int4 GPTQ/AWQ, mxfp4, nf4, int8) are widened to bf16 and multiplied in bf16, as their kernels do on
    GPUs without native 4-bit products."""
    return "fp8" if storage == "fp8" else "bf16"


@dataclass(frozen=True)
class WeightsFormat:
    """How a model's weights are stored: bytes per weight of each weight group (Model.weight_groups' names; a group
    not listed takes `default_bytes`), the dtype its GEMMs run in (gemm_dtype) and where the figures come from."""

    name: str  # e.g. "fp8 block 128x128", "mxfp4 experts, bf16 rest"
    source: str  # "quantization_config", "safetensors headers", "--weight-dtype", "no quantization_config"
    default_bytes: float
    group_bytes: tuple[tuple[str, float], ...] = ()
    gemm: str = "bf16"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source})"

    def bytes_per_weight(self, group: str) -> float:
        return dict(self.group_bytes).get(group, self.default_bytes)

    def bytes_of(self, groups: dict[str, int]) -> int:
        """Bytes of `groups` (weights per group)."""
        per_weight = dict(self.group_bytes)
        return round(sum(n * per_weight.get(group, self.default_bytes) for group, n in groups.items()))


def uniform_weights(storage: StorageFormat, source: str = "--weight-dtype") -> WeightsFormat:
    """Every weight stored as `storage`."""
    return WeightsFormat(storage.name, source, storage.bytes_per_element, gemm=gemm_dtype(storage.name))


def served_weights(checkpoint: WeightsFormat | None, given: StorageFormat | None) -> WeightsFormat:
    """The weights a deployment serves: `given` (an explicit --weight-dtype) over the checkpoint's format, else the
    checkpoint's, else bf16 (a checkpoint without a quantization_config or safetensors headers)."""
    if given is None:
        return checkpoint or uniform_weights(FORMATS["bf16"], "no quantization_config")
    if checkpoint is None:
        return uniform_weights(given)
    return uniform_weights(given, f"--weight-dtype, over the checkpoint's {checkpoint.name}")
