"""Weight bytes of a checkpoint from its config.json's `quantization_config`, without reading its weights.

Each weight group of the model (attention, dense feed-forward, routed experts, shared experts, router,
embedding table, LM head, norms) is stored either quantized or in the checkpoint's dtype (torch_dtype/dtype,
bf16 when absent). Quantized linear layers: those of the decoder layers (attention, feed-forward, experts),
less the modules the config keeps unconverted (modules_to_not_convert, ignore, llm_int8_skip_modules); the
router, norms, embedding table and LM head stay unquantized unless a format says otherwise.

Bytes per quantized weight, scales included (formats as their libraries store them):
- fp8 (DeepSeek-V3, Qwen3-FP8): 1 byte, plus one fp32 scale per weight_block_size block (128 x 128: 4 / 16384),
  or per tensor when no block size is given (counted as none).
- gptq / awq, `bits` b with group_size g: b/8 bytes, plus per group an fp16 scale and a b-bit zero point
  (GPTQ's act-order index, 4 bytes per input row, is left out).
- compressed-tensors: its config_groups' weights num_bits, plus a 2-byte scale per group_size weights
  (strategy "group"); per-channel and per-tensor scales count as none.
- mxfp4 (gpt-oss): 4 bits plus one 8-bit shared exponent per 32 weights, 4.25 bits.
- bitsandbytes 4-bit (nf4/fp4): 4 bits plus an fp32 absmax per 64 weights (with double quantization an 8-bit
  absmax per 64 and an fp32 per 256 blocks); 8-bit: 1 byte (its per-row fp32 scale counted as none).
"""

from __future__ import annotations

import re

from ..dtypes import WeightsFormat, gemm_dtype
from ..model import Model
from ..units import InputError

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float8_e4m3fn": 1}
DTYPE_NAMES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
               "float8_e4m3fn": "fp8"}
# The groups of Model.weight_groups a quantized checkpoint stores quantized (less its modules_to_not_convert):
# the decoder layers' linear layers.
QUANTIZED_GROUPS = ("self_attn", "mlp", "mlp.experts", "mlp.shared_expert")
GROUP_NAMES = {"self_attn": "attention", "mlp": "dense MLP", "mlp.experts": "experts",
               "mlp.shared_expert": "shared experts"}


_LAYER_PREFIX = re.compile(r"^model\.(language_model\.)?(layers\.(\*|\d+|\.\*|\[\^.\]\+)\.)?")


def _kept(patterns: list[str], group: str) -> bool:
    """Whether a module pattern (e.g. 'model.layers.*.self_attn', 'lm_head', 're:.*self_attn.*') names the group,
    the whole of it ('mlp' covers the experts) or a part of it ('self_attn.o_proj'; the router 'mlp.gate' is not
    part of the dense 'mlp')."""
    for pattern in patterns:
        name = _LAYER_PREFIX.sub("", str(pattern).removeprefix("re:")).strip(".*$")
        if name and (name == group or group.startswith(name + ".")
                     or (group != "mlp" and name.startswith(group + "."))):
            return True
    return False


def _whole(value, field: str, where: str, low: int, high: int) -> int:
    """A whole-number field of quantization_config in [low, high] (group sizes also take -1: no groups)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not (low <= value <= high or (field.endswith("group_size") and value == -1)):
        raise InputError(f"{where}: quantization_config {field} must be a whole number in [{low}, {high}], "
                         f"not {value!r}")
    return int(value)


def _module_names(value, field: str, where: str) -> list[str]:
    """A quantization_config list of module names (null: none; one name alone: a list of it)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InputError(f"{where}: quantization_config {field} must be a list of module names, not {value!r}")


def _quantized_bytes_per_weight(q: dict, where: str) -> tuple[float, str, str]:
    """(bytes per quantized weight, the format's name, the storage its GEMMs see: "fp8" or a weight-only one)."""
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":
        block = q.get("weight_block_size")
        if block:
            if not isinstance(block, (list, tuple)) or len(block) != 2:
                raise InputError(f"{where}: quantization_config weight_block_size must be two whole numbers, "
                                 f"not {block!r}")
            block = [_whole(b, "weight_block_size", where, 1, 2**16) for b in block]
            return 1 + 4 / (block[0] * block[1]), f"fp8 block {block[0]}x{block[1]}", "fp8"
        return 1.0, "fp8 per tensor", "fp8"
    if method in ("gptq", "awq"):
        bits = _whole(q.get("bits", q.get("w_bit", 4)), "bits", where, 1, 16)
        group = _whole(q.get("group_size", q.get("q_group_size", 128)), "group_size", where, 1, 2**20)
        per_group = 2 + bits / 8  # fp16 scale + packed zero point
        return bits / 8 + (per_group / group if group and group > 0 else 0), f"{method} int{bits} g{group}", "int"
    if method == "mxfp4":
        return 4.25 / 8, "mxfp4", "mxfp4"
    if method == "bitsandbytes":
        if q.get("load_in_4bit"):
            kind = q.get("bnb_4bit_quant_type", "fp4")
            absmax = (1 + 4 / 256) / 64 if q.get("bnb_4bit_use_double_quant") else 4 / 64
            return 0.5 + absmax, f"bitsandbytes {kind}", kind
        return 1.0, "bitsandbytes int8", "int8"
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        group = next((g for g in groups.values() if isinstance(g, dict) and g.get("weights")), None)
        if not group:
            raise InputError(f"{where}: compressed-tensors quantization_config has no config_groups weights")
        weights, inputs = group["weights"], group.get("input_activations") or {}
        if not isinstance(weights, dict):
            raise InputError(f"{where}: compressed-tensors config_groups weights must be an object")
        bits, size, kind = weights.get("num_bits", 8), weights.get("group_size"), weights.get("type", "int")
        bits = _whole(bits, "num_bits", where, 1, 16)
        size = None if size is None else _whole(size, "group_size", where, 1, 2**20)
        scale = 2 / size if weights.get("strategy") == "group" and size else 0
        # fp8 weights with fp8 activations (W8A8) run fp8 GEMMs; anything else is weight-only.
        fp8 = kind == "float" and bits == 8 and inputs.get("type") == "float" and inputs.get("num_bits") == 8
        return bits / 8 + scale, f"compressed-tensors {kind}{bits}" + (f" g{size}" if scale else ""), \
            "fp8" if fp8 else f"{kind}{bits}"
    raise InputError(f"{where}: quant_method {method!r} is not supported; kvplan reads fp8, gptq, awq, "
                     f"compressed-tensors, mxfp4 and bitsandbytes")


def checkpoint_dtype(config: dict) -> tuple[str, float]:
    """(name, bytes per weight) of the unquantized weights of the checkpoint `config` describes (bf16 if unstated)."""
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16").removeprefix("torch.")
    return DTYPE_NAMES.get(dtype, "bf16"), DTYPE_BYTES.get(dtype, 2)


def checkpoint_weights(config: dict, model: Model, where: str = "config.json") -> WeightsFormat | None:
    """How the checkpoint that `config` describes stores its weights, from its quantization_config (None without
    one): the quantized groups at the format's bytes per weight, the rest in the checkpoint's dtype."""
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    per_weight, name, storage = _quantized_bytes_per_weight(q, where)
    base_name, base = checkpoint_dtype(config)
    kept = [name for field in ("modules_to_not_convert", "ignore", "llm_int8_skip_modules")
            for name in _module_names(q.get(field), field, where)]
    groups = model.weight_groups()
    quantized = [g for g in QUANTIZED_GROUPS if groups[g] and not _kept(kept, g)]
    present = [g for g in QUANTIZED_GROUPS if groups[g]]
    if quantized != present:  # say which groups are quantized where some linear layers are not
        name = f"{name} {', '.join(GROUP_NAMES[g] for g in quantized) or 'nothing'}, {base_name} rest"
    return WeightsFormat(name, "quantization_config", base, tuple((g, per_weight) for g in quantized),
                         gemm_dtype(storage))
