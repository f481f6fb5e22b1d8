"""Recommendations: concrete changes to a deployment, ranked by $ per million decoded tokens among those that fit.

A candidate changes up to `max_changes` of: the KV cache format (fp8, int8, int4), tensor parallelism over
more GPUs (2, 4, 8; only sizes that divide the attention heads, as serving engines require), and the attention (re-cast to GQA, MLA, TPA or DSA, or a 4096-token window); a paged
cache (16-token blocks, as vLLM) is tried on its own. Every number comes from the Estimator at the same context; with a concurrency C
the batch is the largest that fits, up to C (budget.largest_batch), and C sequences need ceil(C / batch)
copies of the deployment.

Re-casting attention or adding a window changes what the model computes: it needs a model trained (or
fine-tuned) that way, and each such option says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from .api import check_depth, context_or_default, estimator_warnings, estimators
from . import parallel
from .budget import largest_batch
from .dtypes import storage_format
from .estimator import Estimator
from .output import Report
from .recast import recast
from .units import InputError, ceil_div, format_gib, format_tokens

KV_CHOICES = ("fp8", "int8", "int4")
TP_CHOICES = (2, 4, 8)
ATTENTION_CHOICES = ("gqa", "mla", "tpa", "dsa", "window:4096")
PAGED_BLOCK = 16


@dataclass(frozen=True)
class Change:
    """What a candidate changes; None keeps the deployment as given."""

    kv_dtype: str | None = None
    tp: int | None = None
    attention: str | None = None
    block_size: int | None = None

    @property
    def count(self) -> int:
        return sum(v is not None for v in (self.kv_dtype, self.tp, self.attention, self.block_size))

    def describe(self) -> str:
        parts = []
        if self.kv_dtype:
            parts.append(f"kv {self.kv_dtype}")
        if self.tp:
            parts.append(f"tp {self.tp}")
        if self.block_size:
            parts.append(f"paged {self.block_size}-token blocks")
        if self.attention:
            parts.append(f"window {self.attention.split(':')[1]}" if self.attention.startswith("window")
                         else f"re-cast to {self.attention}")
        return " + ".join(parts) or "as given"

    def caveat(self) -> str:
        notes = []
        if self.attention and self.attention.startswith("window"):
            notes.append(f"needs a model trained with a {self.attention.split(':')[1]}-token window")
        elif self.attention:
            notes.append(f"needs a model trained with {self.attention.upper()} attention (re-casting changes the weights)")
        if self.kv_dtype in ("int8", "int4"):
            notes.append(f"{self.kv_dtype} cache: check accuracy")
        if self.block_size:
            notes.append("paging adds only page rounding here: the estimate never reserves max-length slots")
        return "; ".join(notes)


def candidate_changes(base: Estimator, context: int, max_changes: int = 2) -> list[Change]:
    """Every combination of at most `max_changes` changes from different groups that differs from the base."""
    dep, model = base.deployment, base.model
    kvs = [k for k in KV_CHOICES if k != dep.kv_format.name]
    tps = [t for t in TP_CHOICES if t > dep.tp]
    blocks = [PAGED_BLOCK] if not dep.block_size else []
    attentions = []
    for spec in ATTENTION_CHOICES:
        if spec.startswith("window") and int(spec.split(":")[1]) >= context:
            continue  # a window as long as the context changes nothing
        if recast(model, spec).kind_label != model.kind_label:
            attentions.append(spec)
    groups = [[None] + kvs, [None] + tps, [None] + attentions]
    changes = [Change(kv, tp, attention) for kv, tp, attention in itertools.product(*groups)
               if tp is None or _heads_split(model, attention, tp)]
    # Paging alone: the estimate has no max-length reservation for it to save, so it combines with nothing.
    return [c for c in changes if 0 < c.count <= max_changes] + [Change(block_size=b) for b in blocks]


def _heads_split(model, attention: str | None, tp: int) -> bool:
    """Whether the attention heads (after any re-cast) divide evenly over `tp` GPUs: serving engines such as
    vLLM refuse a tensor-parallel size that does not divide them, so such a candidate is no option."""
    heads = (recast(model, attention) if attention else model).attention.n_heads
    return heads % tp == 0


def apply_change(base: Estimator, change: Change) -> Estimator:
    """The base deployment with the change made; everything else (pp, weights, reserve, prices) kept."""
    model, dep = base.model, base.deployment
    runtime_reserve = dep.reserve_bytes == parallel.runtime_reserve_bytes(dep.gpus)
    if change.attention:
        model = recast(model, change.attention)
    if change.kv_dtype:
        dep = replace(dep, kv_format=storage_format(change.kv_dtype))
    if change.tp:
        dep = replace(dep, tp=change.tp)
        if runtime_reserve:  # the runtime reserve of the new GPU count (NCCL buffers)
            dep = replace(dep, reserve_bytes=None)
    if change.block_size is not None:
        dep = replace(dep, block_size=change.block_size)
    check_depth(model, dep)
    return Estimator(model, dep)


def serving_point(estimator: Estimator, context: int, batch: int | None, concurrency: int | None) -> tuple[int, dict]:
    """(batch, estimate row) where this deployment would serve: the given batch, or with a concurrency the
    largest batch that fits up to it (0 when not one sequence fits; the row is then at batch 1)."""
    if concurrency:
        found = largest_batch(estimator, context)
        chosen = min(concurrency, found.value)
        return chosen, estimator.row(chosen or 1, context)
    chosen = batch or 1
    row = estimator.row(chosen, context)
    return (chosen if row["fits"] else 0), row


def option_row(change: Change, estimator: Estimator, context: int, batch: int | None, concurrency: int | None,
               compare_batch: int, base_row: dict, base_compare_row: dict) -> dict:
    served, row = serving_point(estimator, context, batch, concurrency)
    dep = estimator.deployment
    copies = ceil_div(concurrency, served) if concurrency and served else (1 if served else 0)
    compare_total = estimator.row(compare_batch, context)["total_bytes_per_gpu"]
    return {
        "change": change.describe(), "changes": change.count, "caveat": change.caveat(),
        "attention_spec": change.attention or "native",
        "model": row["model"], "attention": row["attention"], "kv_dtype": row["kv_dtype"], "gpus": dep.gpus,
        "tp": dep.tp, "pp": dep.pp, "block_size": dep.block_size, "context": context, "batch": served,
        "fits": served > 0, "copies": copies, "gpus_in_all": copies * dep.gpus,
        "total_bytes_per_gpu": row["total_bytes_per_gpu"], "gpu_memory_bytes": row["gpu_memory_bytes"],
        # Freed at one common batch, so the figure isolates the change rather than a change of batch.
        "memory_freed_bytes_per_gpu": base_compare_row["total_bytes_per_gpu"] - compare_total,
        "decode_tokens_per_second": row["decode_tokens_per_second"],
        "decode_tokens_per_second_before": base_row["decode_tokens_per_second"],
        "decode_usd_per_mtok": row["decode_usd_per_mtok"], "decode_usd_per_mtok_before": base_row["decode_usd_per_mtok"],
        "prefill_usd_per_mtok": row["prefill_usd_per_mtok"], "prefill_usd_per_mtok_before": base_row["prefill_usd_per_mtok"],
    }


@dataclass
class Recommendation:
    baseline: dict  # option_row of the deployment as given
    options: list[dict]  # fitting (and within the price cap), cheapest decode first, ranked from 1
    considered: int  # candidates evaluated
    closest: dict | None  # when nothing fits: the candidate needing the least memory per GPU
    cheapest: dict | None  # the cheapest fitting option before the price cap


def recommend(base: Estimator, context: int, batch: int | None = None, concurrency: int | None = None,
              max_usd_per_mtok: float | None = None, max_changes: int = 2) -> Recommendation:
    """Rank the candidate changes to `base` (a model on a deployment) for `context` tokens per sequence."""
    compare_batch = concurrency or batch or 1
    base_compare_row = base.row(compare_batch, context)
    _, base_row = serving_point(base, context, batch, concurrency)
    baseline = option_row(Change(), base, context, batch, concurrency, compare_batch, base_row, base_compare_row)
    rows = [option_row(change, apply_change(base, change), context, batch, concurrency, compare_batch, base_row,
                       base_compare_row)
            for change in candidate_changes(base, context, max_changes)]
    fitting = [r for r in rows if r["fits"]]
    closest = None if fitting or baseline["fits"] else min(rows + [baseline], key=lambda r: r["total_bytes_per_gpu"])
    fitting.sort(key=lambda r: (r["decode_usd_per_mtok"], r["changes"], r["prefill_usd_per_mtok"]))
    cheapest = fitting[0] if fitting else None
    if max_usd_per_mtok is not None:
        fitting = [r for r in fitting if r["decode_usd_per_mtok"] <= max_usd_per_mtok]
    for rank, row in enumerate(fitting, 1):
        row["rank"] = rank
    return Recommendation(baseline, fitting, len(rows), closest, cheapest)


def recommend_report(deployment: dict, context: int | None = None, batch: int | None = None,
                     concurrency: int | None = None, max_usd_per_mtok: float | None = None, max_changes: int = 2,
                     top: int | None = None) -> Report:
    """`kvplan recommend`: the ranked options for the deployment given as keyword arguments of
    kvplan.api.estimators (its own attention, one kv dtype) at `context` tokens (default: the model's max
    positions), with the deployment as given in the caption; the table shows the first `top`. When nothing
    fits, no rows and one message that says why and names the closest or the cheapest option."""
    (base_estimator,) = estimators(**deployment)
    if base_estimator.model.is_encoder:
        raise InputError(f"{base_estimator.model.name} is an encoder: it has no decode step to rank changes by")
    device = base_estimator.deployment.gpu
    tokens = context_or_default(context, base_estimator.model)
    messages = [f"warning: {m}" for m in estimator_warnings(base_estimator, [tokens])]
    result = recommend(base_estimator, tokens, batch, concurrency, max_usd_per_mtok, max_changes)
    base = result.baseline
    load = f"concurrency {concurrency}" if concurrency else f"batch {batch or 1}"
    if not result.options:
        if result.closest is not None:
            closest = result.closest
            messages.append(f"nothing fits: none of {result.considered} options (up to {max_changes} changes) serves "
                            f"{format_tokens(tokens)} tokens at {load if not concurrency else 'batch 1'} on "
                            f"{device.name}; the closest, {closest['change']} on {closest['gpus']} GPU(s), needs "
                            f"{format_gib(closest['total_bytes_per_gpu'])} GiB per GPU of "
                            f"{format_gib(device.memory_bytes)}")
        else:
            cheapest = result.cheapest or base
            messages.append(f"nothing fits under ${max_usd_per_mtok:,.3f} per million decoded tokens at {load}: the "
                            f"cheapest that fits, {cheapest['change']}, costs ${cheapest['decode_usd_per_mtok']:,.3f}")
        return Report([], messages=messages)
    fits = "fits" if base["fits"] else "[red]does not fit[/]"
    copies = f", {base['copies']} copies for {concurrency} sequences" if concurrency and base["fits"] else ""
    caption = (f"As given: {base['attention']}, kv {base['kv_dtype']}, {base['gpus']} GPU(s), "
               f"batch {base['batch'] or batch or 1}: "
               f"{format_gib(base['total_bytes_per_gpu'])} of {format_gib(device.memory_bytes)} GiB per GPU, {fits}; "
               f"decode {base['decode_tokens_per_second']:,.0f} tok/s{copies}. Ranked by decode $/Mtok at "
               f"${device.usd_per_hour:.2f}/GPU-hour; freed = GiB per GPU at the same batch. {len(result.options)} "
               f"of {result.considered} options fit.")
    return Report(result.options, table_rows=result.options[:top], messages=messages, caption=caption,
                  title=f"kvplan recommend: {base['model']} at {format_tokens(tokens)} tokens, {load}")
