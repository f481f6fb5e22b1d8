"""Budgets: the longest context and the largest batch that fit the GPUs' memory, per attention kind.

Both are exact searches over `Estimator.row(...)["fits"]`, the same test `kvplan estimate` prints. Memory per
GPU (weights + cache + prefill activation peak + reserve) never decreases as the context or the batch grows
(each term is a sum of non-negative parts in both), so a doubling-then-bisecting search finds the boundary:
the reported value fits, and one token more (one block more when the cache is paged) or one sequence more
does not.

The binding term is the larger of the two shares that grow, cache or activations, at the boundary; when the
weights (and the reserve) alone exceed a GPU's memory nothing can fit and the budget says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .api import context_or_default, estimator_warnings, native_and_recasts
from .estimator import Estimator
from .output import Report, deployment_caption
from .units import InputError, format_tokens

SEARCH_LIMIT = 2**40  # tokens or sequences; far beyond any GPU memory, it only guards the doubling loop
WEIGHTS_EXCEED = "weights alone exceed memory"


def largest_fitting(fits: Callable[[int], bool], limit: int = SEARCH_LIMIT) -> int | None:
    """The largest n >= 1 with fits(n), for fits true up to some n and false after; 0 if fits(1) is false;
    None if it still fits at `limit` (memory that stops growing: a windowed cache under chunked prefill)."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, 2 * high
        if high > limit:
            return None
    while high - low > 1:  # fits(low) and not fits(high)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass
class Boundary:
    """The largest fitting value of one search and the estimate there."""

    value: int | None  # tokens (context search) or sequences (batch search); 0 when nothing fits, None: no limit
    row: dict  # Estimator.row at the boundary, or at the smallest point when nothing fits
    binding: str  # "cache", "activations" or WEIGHTS_EXCEED
    headroom_bytes: int  # memory per GPU minus the boundary's use (negative: short by that much)


def weights_exceed(estimator: Estimator) -> bool:
    dep = estimator.deployment
    return estimator.weights_bytes_per_gpu + dep.reserve_bytes > dep.usable_memory_bytes


def _boundary(estimator: Estimator, value: int, row: dict) -> Boundary:
    if weights_exceed(estimator):
        binding = WEIGHTS_EXCEED
    else:
        binding = "cache" if row["kv_cache_bytes_per_gpu"] >= row["activation_bytes_per_gpu"] else "activations"
    return Boundary(value, row, binding, row["usable_memory_bytes"] - row["total_bytes_per_gpu"])


def longest_context(estimator: Estimator, batch: int) -> Boundary:
    """Longest context (whole blocks when paged) that fits at `batch` sequences."""
    step = estimator.deployment.block_size or 1
    blocks = largest_fitting(lambda n: estimator.row(batch, n * step)["fits"])
    if blocks is None:  # memory stops growing with context: every context fits
        return _boundary(estimator, None, estimator.row(batch, SEARCH_LIMIT))
    context = blocks * step
    return _boundary(estimator, context, estimator.row(batch, context or step))


def largest_batch(estimator: Estimator, context: int) -> Boundary:
    """Largest batch that fits at `context` tokens per sequence."""
    batch = largest_fitting(lambda n: estimator.row(n, context)["fits"])
    return _boundary(estimator, batch, estimator.row(batch or 1, context))


def budget_row(estimator: Estimator, batch: int, context: int) -> dict:
    """One flat row: the longest context at `batch`, and the largest batch at `context`, with their costs."""
    model, dep = estimator.model, estimator.deployment
    by_context = longest_context(estimator, batch)
    by_batch = largest_batch(estimator, context)
    row = {
        "model": model.name, "attention": model.kind_label, "gpu": dep.gpu.name, "gpus": dep.gpus, "tp": dep.tp,
        "pp": dep.pp, "kv_dtype": dep.kv_format.name, "block_size": dep.block_size,
        "gpu_memory_bytes": dep.gpu.memory_bytes, "usable_memory_bytes": dep.usable_memory_bytes, "weights_bytes_per_gpu": estimator.weights_bytes_per_gpu,
        "kv_bytes_per_token": estimator.kv_bytes_per_token, "max_positions": model.max_positions,
        "weights_exceed_memory": weights_exceed(estimator),
    }
    for prefix, fixed_key, fixed, found_key, boundary in (
            ("max_context", "batch", batch, "max_context", by_context),
            ("max_batch", "context", context, "max_batch", by_batch)):
        fits = boundary.value is None or boundary.value > 0
        row[fixed_key] = fixed
        row[found_key] = boundary.value
        row[f"{prefix}_binding"] = boundary.binding
        row[f"{prefix}_total_bytes_per_gpu"] = boundary.row["total_bytes_per_gpu"]
        row[f"{prefix}_kv_cache_bytes_per_gpu"] = boundary.row["kv_cache_bytes_per_gpu"]
        row[f"{prefix}_activation_bytes_per_gpu"] = boundary.row["activation_bytes_per_gpu"]
        row[f"{prefix}_headroom_bytes"] = boundary.headroom_bytes
        # Costs only where something fits: a price for a configuration that cannot run would mislead.
        row[f"{prefix}_prefill_usd_per_mtok"] = boundary.row["prefill_usd_per_mtok"] if fits else None
        row[f"{prefix}_decode_usd_per_mtok"] = boundary.row["decode_usd_per_mtok"] if fits else None
    row["note"] = budget_note(row)
    return row


def budget_note(row: dict) -> str:
    """Plain words for the cases a number alone would hide."""
    gib = 2**30
    if row["weights_exceed_memory"]:
        return (f"weights alone exceed memory: {row['weights_bytes_per_gpu'] / gib:,.2f} GiB of weights per GPU "
                f"(plus the reserve) vs {row['usable_memory_bytes'] / gib:,.2f} GiB usable; add GPUs or quantize the weights")
    notes = []
    if row["max_context"] == 0:
        notes.append(f"not even 1 token fits at batch {row['batch']}")
    if row["max_context"] is None:
        notes.append(f"any context fits at batch {row['batch']}: the cache holds at most its windows and chunked "
                     f"prefill bounds the activations, so memory stops growing with context")
    if row["max_batch"] == 0:
        notes.append(f"not even 1 sequence of {row['context']:,} tokens fits")
    return "; ".join(notes)


def memory_curves(estimators: list[Estimator], rows: list[dict], batch: int,
                  points: int = 200) -> tuple[list[int], list[dict]]:
    """(contexts, one curve per estimator): memory per GPU in bytes at `batch` over contexts from 0 to 1.2 x the
    longest budget or asked context (at least 4096 tokens), with the curve's label and its longest fitting
    context (0: none) and the memory there."""
    high = max(4096, int(1.2 * max([r["max_context"] or 0 for r in rows] + [r["context"] for r in rows])))
    contexts = sorted({max(1, high * i // (points - 1)) for i in range(points)})
    curves = [{"label": f"{row['attention']}, kv {row['kv_dtype']}",
               "total_bytes_per_gpu": [estimator.row(batch, c)["total_bytes_per_gpu"] for c in contexts],
               "max_context": row["max_context"],
               "max_context_total_bytes_per_gpu": row["max_context_total_bytes_per_gpu"]}
              for estimator, row in zip(estimators, rows)]
    return contexts, curves


def budget_report(deployment: dict, batch: int, context: int | None = None, plot: str | None = None) -> Report:
    """`kvplan budget`: one budget_row per attention (the model's own, then each re-cast of the deployment
    given as keyword arguments of kvplan.api.estimators) at `batch` sequences and `context` tokens (default:
    the model's max positions); with `plot`, a PNG of memory per GPU against context written there."""
    found = native_and_recasts(deployment)
    tokens = context_or_default(context, found[0].model)
    messages = [f"warning: {m}" for e in found for m in estimator_warnings(e, [tokens])]
    rows = [budget_row(e, batch, tokens) for e in found]
    if plot:
        from .plotting import plot_budget

        dep = found[0].deployment
        contexts, curves = memory_curves(found, rows, batch)
        title = (f"{rows[0]['model'].split(' [')[0]} on {dep.gpu.name} x{dep.gpus}, batch {batch}: "
                 f"dots = longest context that fits")
        messages.append(f"wrote {plot_budget(contexts, curves, dep.usable_memory_bytes, title, plot)}")
    notes = [f"{row['attention']}, kv {row['kv_dtype']}: {row['note']}" for row in rows if row["note"]]
    beyond = [r for r in rows if r["max_positions"] and (r["max_context"] or 0) > r["max_positions"]]
    if beyond:
        notes.append(f"Longest contexts beyond the model's {beyond[0]['max_positions']:,} positions are what memory "
                     f"allows; the model was not trained that long.")
    return Report(rows, title=f"kvplan budget, {found[0].model.name}: longest context at batch {batch}, largest batch "
                              f"at context {format_tokens(tokens)}",
                  caption=deployment_caption(found[0].deployment, found[0].weights_format), messages=messages,
                  notes=notes)
