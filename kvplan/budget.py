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

from .estimator import Estimator
from .units import InputError

SEARCH_LIMIT = 2**40  # tokens or sequences; far beyond any GPU memory, it only guards the doubling loop
WEIGHTS_EXCEED = "weights alone exceed memory"


def largest_fitting(fits: Callable[[int], bool], limit: int = SEARCH_LIMIT) -> int:
    """The largest n >= 1 with fits(n), for fits true up to some n and false after; 0 if fits(1) is false."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):
        low, high = high, 2 * high
        if high > limit:
            raise InputError(f"still fits at {limit:,}: the memory budget is implausibly large")
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

    value: int  # tokens (context search) or sequences (batch search); 0 when nothing fits
    row: dict  # Estimator.row at the boundary, or at the smallest point when nothing fits
    binding: str  # "cache", "activations" or WEIGHTS_EXCEED
    headroom_bytes: int  # memory per GPU minus the boundary's use (negative: short by that much)


def weights_exceed(estimator: Estimator) -> bool:
    dep = estimator.deployment
    return estimator.weights_bytes_per_gpu + dep.reserve_bytes > dep.gpu.memory_bytes


def _boundary(estimator: Estimator, value: int, row: dict) -> Boundary:
    if weights_exceed(estimator):
        binding = WEIGHTS_EXCEED
    else:
        binding = "cache" if row["kv_cache_bytes_per_gpu"] >= row["activation_bytes_per_gpu"] else "activations"
    return Boundary(value, row, binding, row["gpu_memory_bytes"] - row["total_bytes_per_gpu"])


def longest_context(estimator: Estimator, batch: int) -> Boundary:
    """Longest context (whole blocks when paged) that fits at `batch` sequences."""
    step = estimator.deployment.block_size or 1
    blocks = largest_fitting(lambda n: estimator.row(batch, n * step)["fits"])
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
        "gpu_memory_bytes": dep.gpu.memory_bytes, "weights_bytes_per_gpu": estimator.weights_bytes_per_gpu,
        "kv_bytes_per_token": estimator.kv_bytes_per_token, "max_positions": model.max_positions,
        "weights_exceed_memory": weights_exceed(estimator),
    }
    for prefix, fixed_key, fixed, found_key, boundary in (
            ("max_context", "batch", batch, "max_context", by_context),
            ("max_batch", "context", context, "max_batch", by_batch)):
        fits = boundary.value > 0
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
                f"(plus any reserve) vs {row['gpu_memory_bytes'] / gib:,.2f} GiB; add GPUs or quantize the weights")
    notes = []
    if not row["max_context"]:
        notes.append(f"not even 1 token fits at batch {row['batch']}")
    if not row["max_batch"]:
        notes.append(f"not even 1 sequence of {row['context']:,} tokens fits")
    return "; ".join(notes)


def plot_budget(estimators: list[Estimator], rows: list[dict], batch: int, path: str, points: int = 200) -> str:
    """Per-GPU memory (GiB) against context for each kind at `batch`, with the memory line and each kind's
    longest fitting context marked. Writes a PNG to `path` and returns it."""
    from .plotting import new_figure, save_figure, token_axis

    gib = 2**30
    memory = estimators[0].deployment.gpu.memory_bytes
    high = max(4096, int(1.2 * max([r["max_context"] for r in rows] + [r["context"] for r in rows])))
    contexts = sorted({max(1, high * i // (points - 1)) for i in range(points)})
    figure, axes = new_figure()
    for estimator, row in zip(estimators, rows):
        used = [estimator.row(batch, c)["total_bytes_per_gpu"] / gib for c in contexts]
        line, = axes.plot(contexts, used, label=f"{row['attention']}, kv {row['kv_dtype']}")
        if row["max_context"]:
            axes.plot([row["max_context"]], [row["max_context_total_bytes_per_gpu"] / gib], "o", color=line.get_color())
    axes.axhline(memory / gib, color="black", linestyle="--", linewidth=1, label=f"memory {memory / gib:,.1f} GiB")
    token_axis(axes, "context (tokens per sequence)")
    axes.set_ylabel("memory per GPU (GiB)")
    dep = estimators[0].deployment
    axes.set_title(f"{rows[0]['model'].split(' [')[0]} on {dep.gpu.name} x{dep.gpus}, batch {batch}: "
                   f"dots = longest context that fits", fontsize=10)
    axes.set_ylim(0, max(memory / gib * 1.6, 1))
    axes.legend(fontsize=8)
    return save_figure(figure, path)
