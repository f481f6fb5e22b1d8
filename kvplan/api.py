"""The Python API: `kvplan.estimate(...)`, one row (a dict) or many (a pandas DataFrame).

Also `estimators(...)`, which resolves names, files and overrides into Estimators; the CLI, budget,
recommend, cost and profile all go through it, so every entry point reads inputs the same way.
"""

from __future__ import annotations

import itertools
import numbers
import os
import warnings
from typing import Iterable, Sequence

from .dtypes import storage_format, weight_storage
from .estimator import VLLM_MEMORY_UTILIZATION, VLLM_PREFILL_CHUNK, Deployment, Estimator
from .hardware import GPU, get_gpu, gpu_from_file, with_overrides
from .model import Model
from .presets import load_model
from .output import Report, deployment_caption
from .recast import recast
from .units import MAX_TOKENS, InputError, parse_bytes, parse_count, parse_token_list, parse_tokens

DEFAULT_CONTEXT = 32768  # tokens, for a model that states no max positions


def _as_list(value) -> list:
    """One value as [value], several (a list, tuple or other iterable) as a list."""
    if value is None or isinstance(value, (str, numbers.Number, Model, GPU, os.PathLike)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _sizes(values, what: str) -> list[int]:
    """Token counts from a number, a text ('4k', '4k,32k') or a list of them; `what` names the argument."""
    out = []
    for value in _as_list(values):
        if isinstance(value, str) and "," in value:
            out += parse_token_list(value, what)
        else:
            out.append(parse_tokens(value, what))
    if not out:
        raise InputError(f"{what} is empty", what)
    return out


MAX_GPUS = 2**20  # past the largest clusters built (about 10^5 GPUs): a typo, not a deployment


def _count(value, what: str, minimum: int = 1, maximum: int = MAX_GPUS) -> int:
    return parse_count(value, what, minimum, maximum)


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{what} must be True or False, not {value!r}", what)
    return value


def resolve_gpu(gpu: str | GPU = "h100-sxm", hardware_profile: str | None = None, **overrides) -> GPU:
    """A GPU preset (or a GPU), then a hardware file or calibration profile, then single-field overrides."""
    if gpu is not None and not isinstance(gpu, (str, GPU)):
        raise InputError(f"gpu must be a GPU preset name or a kvplan.hardware.GPU, not {gpu!r}", "gpu")
    if hardware_profile is not None and not isinstance(hardware_profile, (str, os.PathLike)):
        raise InputError(f"hardware_profile must be a file path, not {hardware_profile!r}", "hardware_profile")
    base = gpu if isinstance(gpu, GPU) else get_gpu(gpu) if gpu and gpu != "auto" else None
    if gpu == "auto":
        from .gpu_detect import detect_gpu  # pynvml; only when asked

        base = detect_gpu()
    if hardware_profile:
        base = gpu_from_file(hardware_profile, base)
    if base is None:
        raise InputError("gpu names no GPU and no hardware profile describes one: give a preset (see `kvplan gpus`)",
                         "gpu")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return with_overrides(base, clean) if clean else base


def resolve_model(model: str | Model, attention: str | None = None) -> Model:
    resolved = model if isinstance(model, Model) else load_model(model)
    return recast(resolved, attention) if attention else resolved


def deployment_for(gpu: GPU, gpus: int = 1, tp: int | None = None, pp: int = 1, kv_dtype: str = "bf16",
                   weight_dtype: str = "auto", block_size: int = 0, reserve: str | int | None = None,
                   flash: bool = True, prefill_chunk: int = VLLM_PREFILL_CHUNK, dp: int = 1, ep: int = 1,
                   gpus_per_node: int = 0, overlap: bool = False,
                   memory_utilization: float = VLLM_MEMORY_UTILIZATION) -> Deployment:
    """`gpus` alone means tensor parallelism over all the GPUs that pp and dp leave; tp x pp x dp must equal
    gpus when tp is given too. ep divides tp x dp (kvplan.parallel). As vLLM decides by default: prefill in
    chunks of 8192 tokens across the batch (0: whole prompts at once), 0.9 of each GPU's memory usable, and a
    runtime reserve (reserve None or "auto": parallel.runtime_reserve_bytes; else bytes, e.g. "1GiB" or 0).
    Weights as the checkpoint stores them (weight_dtype "auto": Model.weights, else bf16) unless weight_dtype
    names a format.
    Each argument is checked, its name in the message."""
    gpus, pp, dp, ep = (_count(v, name) for v, name in ((gpus, "gpus"), (pp, "pp"), (dp, "dp"), (ep, "ep")))
    gpus_per_node = _count(gpus_per_node, "gpus_per_node", minimum=0)
    block_size = _count(block_size, "block_size", minimum=0, maximum=MAX_TOKENS)
    prefill_chunk = _count(prefill_chunk, "prefill_chunk", minimum=0, maximum=MAX_TOKENS)
    flash, overlap = _flag(flash, "flash"), _flag(overlap, "overlap")
    if tp is None:
        if gpus % (pp * dp):
            raise InputError(f"gpus ({gpus}) must be a multiple of pp x dp ({pp} x {dp})", "gpus")
        tp = gpus // (pp * dp)
    elif _count(tp, "tp") * pp * dp != gpus and gpus != 1:
        raise InputError(f"tp ({tp}) x pp ({pp}) x dp ({dp}) must equal gpus ({gpus})", "tp")
    if reserve is None or reserve == "auto":
        reserve_bytes = None  # Deployment's runtime reserve
    else:
        reserve_bytes = parse_bytes(reserve, "reserve", minimum=0)
    return Deployment(gpu=gpu, tp=tp, pp=pp, dp=dp, ep=ep, kv_format=storage_format(kv_dtype),
                      weight_format=weight_storage(weight_dtype), block_size=block_size,
                      reserve_bytes=reserve_bytes, flash=flash, prefill_chunk=prefill_chunk,
                      gpus_per_node=gpus_per_node, overlap=overlap, memory_utilization=memory_utilization)


def check_depth(model: Model, deployment: Deployment) -> None:
    if deployment.pp > model.n_layers:
        raise InputError(f"pp ({deployment.pp}) exceeds the model's {model.n_layers} layers")


def estimator_warnings(estimator: Estimator, contexts: Iterable[int]) -> list[str]:
    """What is estimated anyway but deserves a word: a context past the model's positions, a paged-cache block
    longer than a context, heads that do not split evenly over the tensor-parallel GPUs (serving engines refuse
    that; the estimate rounds heads up per GPU, one head per GPU where there are more GPUs than heads)."""
    model, tp, block = estimator.model, estimator.deployment.tp, estimator.deployment.block_size
    messages = []
    longest, shortest = max(contexts), min(contexts)
    if model.max_positions and longest > model.max_positions:
        messages.append(f"{model.name}: context {longest} exceeds the model's max_position_embeddings "
                        f"({model.max_positions}); estimated anyway")
    if model.is_encoder:
        messages.append(f"{model.name} is an encoder: prefill attends both ways and nothing is decoded (decode "
                        f"columns are empty)")
    if block > shortest:
        messages.append(f"{model.name}: block size {block} exceeds the context {shortest}: each sequence holds one "
                        f"whole {block}-token block per layer, and the estimate counts it so")
    heads = model.attention.n_heads
    if tp > heads:
        messages.append(f"{model.name}: tp={tp} is more GPUs than its {heads} attention heads (engines such as vLLM "
                        f"refuse this): estimated with one head per GPU, {tp - heads} of them copies")
    elif tp > 1 and heads % tp:
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
               weight_dtype: str = "auto", block_size: int = 0, reserve: str | int | None = None, flash: bool = True,
               hardware_profile: str | None = None, prefill_chunk: int = VLLM_PREFILL_CHUNK, dp: int = 1, ep: int = 1,
               gpus_per_node: int = 0, overlap: bool = False, memory_utilization: float = VLLM_MEMORY_UTILIZATION,
               **gpu_overrides) -> list[Estimator]:
    """One Estimator per (attention re-cast, kv dtype)."""
    base = model if isinstance(model, Model) else load_model(model)
    device = resolve_gpu(gpu, hardware_profile, **gpu_overrides)
    found = []
    for spec, kv in itertools.product(_as_list(attention), _as_list(kv_dtype)):
        resolved = recast(base, spec) if spec is not None else base
        dep = deployment_for(device, gpus, tp, pp, kv or "bf16", weight_dtype, block_size, reserve, flash,
                             prefill_chunk, dp, ep, gpus_per_node, overlap, memory_utilization)
        check_depth(resolved, dep)
        found.append(Estimator(resolved, dep))
    if not found:
        raise InputError("attention and kv_dtype must each name at least one choice, not an empty list")
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
    if not found:
        raise InputError("model must name at least one model, not an empty list", "model")
    if len(found) * len(contexts) * len(batches) == 1:
        return found[0].row(batches[0], contexts[0], prompt_tokens)
    from .grid import frame  # only the many-row API pays for numpy and pandas

    return frame(found, contexts, batches, prompt_tokens)
