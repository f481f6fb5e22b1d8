"""The Python API: `kvplan.estimate(...)`, one row (a dict) or many (a pandas DataFrame).

Also `estimators(...)`, which resolves names, files and overrides into Estimators; the CLI, budget,
recommend, cost and profile all go through it, so every entry point reads inputs the same way.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Iterable, Sequence

from .dtypes import storage_format
from .estimator import VLLM_MEMORY_UTILIZATION, VLLM_PREFILL_CHUNK, Deployment, Estimator
from .hardware import GPU, get_gpu, gpu_from_file, with_overrides
from .model import Model
from .presets import load_model
from .output import Report, deployment_caption
from .recast import recast
from .units import InputError, parse_bytes, parse_tokens

DEFAULT_CONTEXT = 32768  # tokens, for a model that states no max positions


def _as_list(value) -> list:
    if value is None:
        return [None]
    if isinstance(value, (str, int, Model, GPU)):
        return [value]
    return list(value)


def _sizes(values, what: str) -> list[int]:
    out = []
    for value in _as_list(values):
        if isinstance(value, str) and "," in value:
            out += [parse_tokens(v, what) for v in value.split(",") if v.strip()]
        else:
            out.append(parse_tokens(value, what))
    return out


def resolve_gpu(gpu: str | GPU = "h100-sxm", hardware_profile: str | None = None, **overrides) -> GPU:
    """A GPU preset (or a GPU), then a hardware file or calibration profile, then single-field overrides."""
    base = gpu if isinstance(gpu, GPU) else get_gpu(gpu) if gpu and gpu != "auto" else None
    if gpu == "auto":
        from .gpu_detect import detect_gpu  # pynvml; only when asked

        base = detect_gpu()
    if hardware_profile:
        base = gpu_from_file(hardware_profile, base)
    if base is None:
        raise InputError("no GPU given: use --gpu NAME or --hardware-profile FILE")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return with_overrides(base, clean) if clean else base


def resolve_model(model: str | Model, attention: str | None = None) -> Model:
    resolved = model if isinstance(model, Model) else load_model(model)
    return recast(resolved, attention) if attention else resolved


def deployment_for(gpu: GPU, gpus: int = 1, tp: int | None = None, pp: int = 1, kv_dtype: str = "bf16",
                   weight_dtype: str = "bf16", block_size: int = 0, reserve: str | int | None = None,
                   flash: bool = True, prefill_chunk: int = VLLM_PREFILL_CHUNK, dp: int = 1, ep: int = 1,
                   gpus_per_node: int = 0, overlap: bool = False,
                   memory_utilization: float = VLLM_MEMORY_UTILIZATION) -> Deployment:
    """`gpus` alone means tensor parallelism over all the GPUs that pp and dp leave; tp x pp x dp must equal
    gpus when tp is given too. ep divides tp x dp (kvplan.parallel). As vLLM decides by default: prefill in
    chunks of 8192 tokens across the batch (0: whole prompts at once), 0.9 of each GPU's memory usable, and a
    runtime reserve (reserve None: parallel.runtime_reserve_bytes; else bytes, e.g. "1GiB" or 0)."""
    for name, value in (("gpus", gpus), ("pp", pp), ("dp", dp), ("ep", ep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive whole number, not {value!r}")
    if tp is None:
        if gpus % (pp * dp):
            raise InputError(f"gpus ({gpus}) must be a multiple of pp x dp ({pp} x {dp})")
        tp = gpus // (pp * dp)
    elif tp < 1 or tp * pp * dp != gpus and gpus != 1:
        raise InputError(f"tp ({tp}) x pp ({pp}) x dp ({dp}) must equal gpus ({gpus})")
    if gpus_per_node < 0:
        raise InputError(f"gpus per node must be positive, not {gpus_per_node}")
    if prefill_chunk < 0:
        raise InputError(f"prefill chunk must be positive, not {prefill_chunk}")
    if block_size < 0:
        raise InputError(f"block size must be positive, not {block_size}")
    if reserve in (None, "auto"):
        reserve_bytes = None  # Deployment's runtime reserve
    else:
        reserve_bytes = parse_bytes(reserve, "reserve") if reserve not in (0, "0") else 0
    return Deployment(gpu=gpu, tp=tp, pp=pp, dp=dp, ep=ep, kv_format=storage_format(kv_dtype),
                      weight_format=storage_format(weight_dtype, "weight dtype"), block_size=block_size,
                      reserve_bytes=reserve_bytes, flash=flash, prefill_chunk=prefill_chunk,
                      gpus_per_node=gpus_per_node, overlap=overlap, memory_utilization=memory_utilization)


def check_depth(model: Model, deployment: Deployment) -> None:
    if deployment.pp > model.n_layers:
        raise InputError(f"pp ({deployment.pp}) exceeds the model's {model.n_layers} layers")


def estimator_warnings(estimator: Estimator, contexts: Iterable[int]) -> list[str]:
    """What is estimated anyway but deserves a word: a context past the model's positions, heads that do not
    split evenly over the tensor-parallel GPUs (serving engines refuse that; the estimate rounds heads up)."""
    model, tp = estimator.model, estimator.deployment.tp
    messages = []
    longest = max(contexts)
    if model.max_positions and longest > model.max_positions:
        messages.append(f"{model.name}: context {longest} exceeds the model's max_position_embeddings "
                        f"({model.max_positions}); estimated anyway")
    if model.is_encoder:
        messages.append(f"{model.name} is an encoder: prefill attends both ways and nothing is decoded (decode "
                        f"columns are empty)")
    if tp > 1 and model.attention.n_heads % tp:
        messages.append(f"{model.name}: {model.attention.n_heads} attention heads do not split evenly over tp={tp} "
                        f"GPUs (engines such as vLLM refuse this); estimated with heads rounded up per GPU")
    ep = estimator.deployment.ep
    if ep > 1 and not model.ffn.is_moe:
        messages.append(f"{model.name} has no routed experts: ep={ep} changes nothing")
    elif ep > 1 and model.ffn.n_experts % ep:
        messages.append(f"{model.name}: {model.ffn.n_experts} routed experts do not split evenly over ep={ep} GPUs; "
                        f"estimated with experts rounded up per GPU")
    return messages


def estimators(model: str | Model, gpu: str | GPU = "h100-sxm", attention: str | Sequence[str] | None = None,
               kv_dtype: str | Sequence[str] = "bf16", gpus: int = 1, tp: int | None = None, pp: int = 1,
               weight_dtype: str = "bf16", block_size: int = 0, reserve: str | int | None = None, flash: bool = True,
               hardware_profile: str | None = None, prefill_chunk: int = VLLM_PREFILL_CHUNK, dp: int = 1, ep: int = 1,
               gpus_per_node: int = 0, overlap: bool = False, memory_utilization: float = VLLM_MEMORY_UTILIZATION,
               **gpu_overrides) -> list[Estimator]:
    """One Estimator per (attention re-cast, kv dtype)."""
    base = model if isinstance(model, Model) else load_model(model)
    device = resolve_gpu(gpu, hardware_profile, **gpu_overrides)
    found = []
    for spec, kv in itertools.product(_as_list(attention), _as_list(kv_dtype)):
        resolved = recast(base, spec) if spec else base
        dep = deployment_for(device, gpus, tp, pp, kv or "bf16", weight_dtype, block_size, reserve, flash,
                             prefill_chunk, dp, ep, gpus_per_node, overlap, memory_utilization)
        check_depth(resolved, dep)
        found.append(Estimator(resolved, dep))
    return found


def native_and_recasts(deployment: dict) -> list[Estimator]:
    """Estimators for keyword arguments of `estimators`: the model's own attention first, then each re-cast
    once, leaving out a re-cast that comes out the same as an earlier row (e.g. gqa on a model that is GQA)."""
    specs = _as_list(deployment.get("attention"))
    others = [s for s in specs if s and s.split(":")[0].strip().lower() != "native"]
    seen, kept = set(), []
    for estimator in estimators(**{**deployment, "attention": ["native"] + list(dict.fromkeys(others))}):
        key = (estimator.model.kind_label, estimator.model.layer_windows, estimator.deployment.kv_format.name)
        if key not in seen:
            seen.add(key)
            kept.append(estimator)
    return kept


def context_or_default(context: int | None, model: Model) -> int:
    """The context asked for, else the model's max positions, else DEFAULT_CONTEXT."""
    return context or model.max_positions or DEFAULT_CONTEXT


def estimate_rows(found: Sequence[Estimator], contexts: Sequence[int], batches: Sequence[int],
                  prompt: int | None = None) -> tuple[list[dict], list[str]]:
    """(rows, warnings): one row per (estimator, context, batch), contexts outermost per estimator, and
    estimator_warnings for each estimator."""
    rows, messages = [], []
    for estimator in found:
        messages += estimator_warnings(estimator, contexts)
        row = estimator.row
        rows += [row(b, c, prompt) for c in contexts for b in batches]
    return rows, messages


def estimate_report(deployment: dict, contexts: Sequence[int], batches: Sequence[int],
                    prompt: int | None = None) -> Report:
    """`kvplan estimate`: every (attention, kv dtype, context, batch) row of the deployment given as keyword
    arguments of `estimators`, its warnings, and the caption saying where the numbers hold."""
    found = estimators(**deployment)
    rows, messages = estimate_rows(found, contexts, batches, prompt)
    return Report(rows, title="kvplan estimate", caption=deployment_caption(found[0].deployment),
                  messages=[f"warning: {m}" for m in messages])


def estimate(model: str | Model, gpu: str | GPU = "h100-sxm", context: int | str | Sequence = 4096,
             batch: int | str | Sequence = 1, attention: str | Sequence[str] | None = None,
             kv_dtype: str | Sequence[str] = "bf16", prompt: int | str | None = None, **options):
    """Estimate one or many configurations.

    `model`, `attention`, `kv_dtype`, `context` and `batch` may each be a list: every combination gives a row.
    Returns a dict for a single row, else a pandas DataFrame with one row per combination.
    Other keyword options: gpus, tp, pp, dp, ep, gpus_per_node, overlap, weight_dtype, block_size, reserve, flash, prefill_chunk, hardware_profile, and GPU
    field overrides (e.g. usd_per_hour=2.0).
    """
    contexts, batches = _sizes(context, "context"), _sizes(batch, "batch")
    prompt_tokens = parse_tokens(prompt, "prompt") if prompt is not None else None
    if prompt_tokens and prompt_tokens > min(contexts):
        raise InputError(f"prompt ({prompt_tokens}) exceeds context ({min(contexts)}): the cache holds the context, "
                         f"prompt included")
    found = []
    for name in _as_list(model):
        for estimator in estimators(name, gpu, attention, kv_dtype, **options):
            for message in estimator_warnings(estimator, contexts):
                warnings.warn(message, stacklevel=2)
            found.append(estimator)
    if len(found) * len(contexts) * len(batches) == 1:
        return found[0].row(batches[0], contexts[0], prompt_tokens)
    from .grid import frame  # only the many-row API pays for numpy and pandas

    return frame(found, contexts, batches, prompt_tokens)
