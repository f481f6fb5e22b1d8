"""The planning commands: `kvplan budget`, `kvplan recommend` and `kvplan cost`.

Registered on kvplan.cli's app (cli.py imports this module last). Like estimate, each command turns options
into Estimators through kvplan.api and prints rows; heavy imports (matplotlib) happen inside the bodies, so
`kvplan estimate` starts no slower for these commands being here.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from .cli import (AttentionOpt, BandwidthEffOpt, BlockOpt, ComputeEffOpt, GpuOpt, GpuSetOpt, GpusOpt, JsonOpt, KvDtypeOpt,
                  ModelOpt, NaiveOpt, ChunkOpt, PpOpt, PriceOpt, ProfileOpt, ReserveOpt, WeightDtypeOpt, app, err,
                  plan_options)
from .units import InputError, format_gib, format_tokens

MemoryOpt = typer.Option(None, "--memory", help="Memory per GPU replacing the preset's, e.g. 80GiB or 141GB (GiB = 2^30 bytes, GB = 10^9).")
PlotOpt = typer.Option(None, "--plot", help="Write a PNG figure to this file (needs matplotlib).")
ContextOpt = typer.Option(None, "--context", "-c", help="Tokens per sequence: 4096, 4k, 128k (k = 1024); default: the model's "
                          "max positions, else 32k.")
DEFAULT_CONTEXT = 32768


def _with_native(specs: list[str] | None) -> list[str]:
    """The model's own attention first, then each re-cast once."""
    others = [s for s in specs or [] if s.split(":")[0].strip().lower() != "native"]
    return ["native"] + list(dict.fromkeys(others))


def _distinct(estimators):
    """Drop re-casts that come out the same as an earlier row (e.g. gqa on a model that is GQA already)."""
    seen, kept = set(), []
    for estimator in estimators:
        key = (estimator.model.kind_label, estimator.model.layer_windows, estimator.deployment.kv_format.name)
        if key not in seen:
            seen.add(key)
            kept.append(estimator)
    return kept


def _context_or_default(context: str | None, model) -> int:
    from .units import parse_tokens

    return parse_tokens(context, "--context") if context else (model.max_positions or DEFAULT_CONTEXT)


def _warn_context(estimators, contexts) -> None:
    from .api import plan_warnings

    for estimator in estimators:
        for message in plan_warnings(estimator, contexts):
            err(f"warning: {message}")


def _caption(estimator) -> str:
    dep, gpu = estimator.deployment, estimator.deployment.gpu
    return (f"{gpu.name} x{dep.gpus} (tp {dep.tp}, pp {dep.pp}), {format_gib(gpu.memory_bytes)} GiB per GPU, "
            f"{dep.weight_format.name} weights; "
            f"GiB = 2^30 bytes; roofline at {gpu.compute_efficiency:.0%} of {gpu.bf16_flops / 1e12:,.4g} TFLOP/s and "
            f"{gpu.bandwidth_efficiency:.0%} of {gpu.bandwidth_bytes_per_s / 1e12:,.2f} TB/s; ${gpu.usd_per_hour:.2f}/GPU-hour")


def _usd(value) -> str:
    return "-" if value is None else f"{value:,.3f}"


def _count(value: int) -> str:
    return f"{value:,}" if value else "[red]none[/]"


BUDGET_COLUMNS = [  # the model is in the title: one model per table
    ("attention", lambda r: r["attention"]),
    ("kv", lambda r: r["kv_dtype"]),
    ("KiB/token", lambda r: f"{r['kv_bytes_per_token'] / 1024:,.1f}"),
    ("weights GiB/GPU", lambda r: format_gib(r["weights_bytes_per_gpu"])),
    ("longest context", lambda r: _count(r["max_context"])),
    ("binding", lambda r: r["max_context_binding"]),
    ("headroom GiB", lambda r: format_gib(r["max_context_headroom_bytes"])),
    ("$/Mtok decode", lambda r: _usd(r["max_context_decode_usd_per_mtok"])),
    ("largest batch", lambda r: _count(r["max_batch"])),
    ("binding ", lambda r: r["max_batch_binding"]),
    ("headroom GiB ", lambda r: format_gib(r["max_batch_headroom_bytes"])),
    ("$/Mtok decode ", lambda r: _usd(r["max_batch_decode_usd_per_mtok"])),
]


@app.command()
def budget(
    model: str = ModelOpt,
    gpu: str = GpuOpt,
    gpus: int = GpusOpt,
    pp: int = PpOpt,
    memory: Optional[str] = MemoryOpt,
    batch: str = typer.Option("1", "--batch", "-b", help="Sequences served together, for the longest-context column."),
    context: Optional[str] = ContextOpt,
    kv_dtype: str = KvDtypeOpt,
    attention: Optional[List[str]] = AttentionOpt,
    weight_dtype: str = WeightDtypeOpt,
    block_size: int = BlockOpt,
    reserve: str = ReserveOpt,
    naive_attention: bool = NaiveOpt,
    prefill_chunk: str = ChunkOpt,
    hardware_profile: Optional[str] = ProfileOpt,
    gpu_set: Optional[List[str]] = GpuSetOpt,
    usd_per_hour: Optional[float] = PriceOpt,
    compute_efficiency: Optional[float] = ComputeEffOpt,
    bandwidth_efficiency: Optional[float] = BandwidthEffOpt,
    plot: Optional[str] = PlotOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Longest context (tokens) at --batch and largest batch at --context that fit, per attention kind.

    The model's own attention always comes first; each --attention adds a re-cast. Headroom is GiB per GPU
    left at that point; binding is the larger growing share there (cache or activations). With --block-size
    the context is whole blocks.
    """
    from .api import plan
    from .budget import budget_row, plot_budget
    from .output import emit
    from .units import parse_tokens

    kwargs = plan_options(locals())
    kwargs["attention"] = _with_native(kwargs["attention"])
    estimators = _distinct(plan(**kwargs))
    sequences = parse_tokens(batch, "--batch")
    tokens = _context_or_default(context, estimators[0].model)
    _warn_context(estimators, [tokens])
    rows = [budget_row(e, sequences, tokens) for e in estimators]
    if plot:
        err(f"wrote {plot_budget(estimators, rows, sequences, plot)}")
    emit(rows, as_json, False, BUDGET_COLUMNS, title=f"kvplan budget, {estimators[0].model.name}: longest context at batch {sequences}, "
         f"largest batch at context {format_tokens(tokens)}", caption=_caption(estimators[0]))
    if not as_json:
        for row in rows:
            if row["note"]:
                typer.echo(f"{row['attention']}, kv {row['kv_dtype']}: {row['note']}")
        beyond = [r for r in rows if r["max_positions"] and r["max_context"] > r["max_positions"]]
        if beyond:
            typer.echo(f"Longest contexts beyond the model's {beyond[0]['max_positions']:,} positions are what memory "
                       f"allows; the model was not trained that long.")


def _before_after(key: str):
    return lambda r: f"{r[key + '_before']:,.3f} -> {r[key]:,.3f}"


RECOMMEND_COLUMNS = [
    ("#", lambda r: str(r["rank"])),
    ("change", lambda r: r["change"]),
    ("GPUs", lambda r: str(r["gpus"])),
    ("batch", lambda r: str(r["batch"])),
    ("GiB/GPU", lambda r: format_gib(r["total_bytes_per_gpu"])),
    ("freed GiB/GPU", lambda r: format_gib(r["memory_freed_bytes_per_gpu"])),
    ("decode tok/s", lambda r: f"{r['decode_tokens_per_second']:,.0f}"),
    ("$/Mtok decode", _before_after("decode_usd_per_mtok")),
    ("$/Mtok prefill", _before_after("prefill_usd_per_mtok")),
    ("caveat", lambda r: r["caveat"]),
]


@app.command()
def recommend(
    model: str = ModelOpt,
    gpu: str = GpuOpt,
    context: Optional[str] = ContextOpt,
    batch: Optional[str] = typer.Option(None, "--batch", "-b", help="Sequences served together (default 1)."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", help="Sequences to serve at once: each option "
                                              "uses the largest batch that fits, up to this, and as many copies as needed."),
    max_usd_per_mtok: Optional[float] = typer.Option(None, "--max-usd-per-mtok", help="Keep options whose decode $ per "
                                                     "million tokens is at most this."),
    max_changes: int = typer.Option(2, "--max-changes", help="Changes combined in one option.", min=1, max=4),
    top: int = typer.Option(10, "--top", help="Options shown in the table (--json gives all).", min=1),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV cache format served now: bf16, fp16, fp8, int8, int4."),
    gpus: int = GpusOpt,
    pp: int = PpOpt,
    memory: Optional[str] = MemoryOpt,
    weight_dtype: str = WeightDtypeOpt,
    block_size: int = BlockOpt,
    reserve: str = ReserveOpt,
    naive_attention: bool = NaiveOpt,
    prefill_chunk: str = ChunkOpt,
    hardware_profile: Optional[str] = ProfileOpt,
    gpu_set: Optional[List[str]] = GpuSetOpt,
    usd_per_hour: Optional[float] = PriceOpt,
    compute_efficiency: Optional[float] = ComputeEffOpt,
    bandwidth_efficiency: Optional[float] = BandwidthEffOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Changes (kv dtype, tensor parallelism, paging, window, attention re-cast) that fit, cheapest decode first.

    Each option shows GiB per GPU, memory freed per GPU (at the same batch as the deployment given), decode
    tokens/s, and $ per million tokens before -> after. Re-cast attention and windows need a model trained that way.
    """
    from .api import plan
    from .output import emit
    from .recommend import recommend as rank_changes
    from .units import parse_tokens

    if batch and concurrency:
        raise InputError("give --batch or --concurrency, not both")
    if "," in kv_dtype:
        raise InputError("recommend takes the one --kv-dtype served now; it tries fp8, int8 and int4 itself")
    if max_usd_per_mtok is not None and not 0 < max_usd_per_mtok < float("inf"):
        raise InputError(f"--max-usd-per-mtok must be positive, not {max_usd_per_mtok}")
    (base_estimator,) = plan(**plan_options({**locals(), "attention": None}))
    if base_estimator.model.is_encoder:
        raise InputError(f"{base_estimator.model.name} is an encoder: it has no decode step to rank changes by")
    device = base_estimator.deployment.gpu
    tokens = _context_or_default(context, base_estimator.model)
    _warn_context([base_estimator], [tokens])
    sequences = parse_tokens(batch, "--batch") if batch else None
    wanted = parse_tokens(concurrency, "--concurrency") if concurrency else None
    result = rank_changes(base_estimator, tokens, sequences, wanted, max_usd_per_mtok, max_changes)
    base = result.baseline
    load = f"concurrency {wanted}" if wanted else f"batch {sequences or 1}"
    if not result.options:
        if result.closest is not None:
            closest = result.closest
            message = (f"nothing fits: none of {result.considered} options (up to {max_changes} changes) serves "
                       f"{format_tokens(tokens)} tokens at {load if not wanted else 'batch 1'} on {device.name}; the "
                       f"closest, {closest['change']} on {closest['gpus']} GPU(s), needs "
                       f"{format_gib(closest['total_bytes_per_gpu'])} GiB per GPU of {format_gib(device.memory_bytes)}")
        else:
            cheapest = result.cheapest or base
            message = (f"nothing fits under ${max_usd_per_mtok:,.3f} per million decoded tokens at {load}: the cheapest "
                       f"that fits, {cheapest['change']}, costs ${cheapest['decode_usd_per_mtok']:,.3f}")
        err(message)
        if as_json:
            emit([], True, False, [])
        return
    fits = "fits" if base["fits"] else "[red]does not fit[/]"
    copies = f", {base['copies']} copies for {wanted} sequences" if wanted and base["fits"] else ""
    caption = (f"As given: {base['attention']}, kv {base['kv_dtype']}, {base['gpus']} GPU(s), "
               f"batch {base['batch'] or sequences or 1}: "
               f"{format_gib(base['total_bytes_per_gpu'])} of {format_gib(device.memory_bytes)} GiB per GPU, {fits}; "
               f"decode {base['decode_tokens_per_second']:,.0f} tok/s{copies}. Ranked by decode $/Mtok at "
               f"${device.usd_per_hour:.2f}/GPU-hour; freed = GiB per GPU at the same batch. {len(result.options)} "
               f"of {result.considered} options fit.")
    rows = result.options if as_json else result.options[:top]
    columns = RECOMMEND_COLUMNS if not wanted else RECOMMEND_COLUMNS[:4] + [
        ("copies (GPUs)", lambda r: f"{r['copies']} ({r['gpus_in_all']})")] + RECOMMEND_COLUMNS[4:]
    emit(rows, as_json, False, columns, caption=caption,
         title=f"kvplan recommend: {base['model']} at {format_tokens(tokens)} tokens, {load}")


COST_POSITIONS = 5  # rows per kind in the table; --json and --plot use every point


@app.command()
def cost(
    model: str = ModelOpt,
    gpu: str = GpuOpt,
    gpus: int = GpusOpt,
    pp: int = PpOpt,
    context: Optional[str] = ContextOpt,
    attention: Optional[List[str]] = AttentionOpt,
    batch: str = typer.Option("1", "--batch", "-b", help="Sequences decoded together (and prefilled together)."),
    chunk: str = typer.Option("8k", "--chunk", help="Prefill chunk, tokens per sequence: the prefill curve at p is the "
                              "per-token cost of a chunk starting at p."),
    points: int = typer.Option(65, "--points", help="Positions from 0 to the context (--json, --plot).", min=2, max=100000),
    kv_dtype: str = KvDtypeOpt,
    weight_dtype: str = WeightDtypeOpt,
    block_size: int = BlockOpt,
    reserve: str = ReserveOpt,
    memory: Optional[str] = MemoryOpt,
    naive_attention: bool = NaiveOpt,
    prefill_chunk: str = ChunkOpt,
    hardware_profile: Optional[str] = ProfileOpt,
    gpu_set: Optional[List[str]] = GpuSetOpt,
    usd_per_hour: Optional[float] = PriceOpt,
    compute_efficiency: Optional[float] = ComputeEffOpt,
    bandwidth_efficiency: Optional[float] = BandwidthEffOpt,
    plot: Optional[str] = PlotOpt,
    as_json: bool = JsonOpt,
) -> None:
    """$ per million tokens of prefill and of decode against token position 0..context, one curve per kind.

    Decode at p: the step writing the token at position p for the batch. Prefill at p: the per-token cost of a
    --chunk prefill chunk starting at p with the earlier tokens cached (the marginal cost of prompt tokens at p).
    """
    from .api import plan
    from .costcurve import cost_curve, plot_cost
    from .output import emit
    from .units import parse_tokens

    kwargs = plan_options(locals())
    kwargs["attention"] = _with_native(kwargs["attention"])
    sequences, chunk_tokens = parse_tokens(batch, "--batch"), parse_tokens(chunk, "--chunk")
    if not kwargs["prefill_chunk"]:
        # The curves prefill in --chunk tokens per sequence, so that is what is in flight when memory is checked.
        kwargs["prefill_chunk"] = sequences * chunk_tokens
    estimators = _distinct(plan(**kwargs))
    tokens = _context_or_default(context, estimators[0].model)
    _warn_context(estimators, [tokens])
    for estimator in estimators:
        row = estimator.row(sequences, tokens)
        if not row["fits"]:
            err(f"warning: {row['attention']} at batch {sequences} and {format_tokens(tokens)} tokens needs "
                f"{format_gib(row['total_bytes_per_gpu'])} GiB per GPU of {format_gib(row['gpu_memory_bytes'])} "
                f"(does not fit); costs estimated anyway")
    curves = [cost_curve(e, tokens, sequences, chunk_tokens, points) for e in estimators]
    if plot:
        err(f"wrote {plot_cost(curves, plot)}")
    if as_json:
        emit([row for curve in curves for row in curve], True, False, [])
        return
    rows = [r for e in estimators for r in cost_curve(e, tokens, sequences, chunk_tokens, COST_POSITIONS)]
    columns = [("attention", lambda r: r["attention"]), ("kv", lambda r: r["kv_dtype"]),
               ("position", lambda r: f"{r['position']:,}"),
               ("$/Mtok prefill", lambda r: f"{r['prefill_usd_per_mtok']:,.3f}"),
               ("$/Mtok decode", lambda r: f"{r['decode_usd_per_mtok']:,.3f}"),
               ("decode ms/step", lambda r: f"{r['decode_seconds_per_token'] * 1e3:,.2f}")]
    emit(rows, False, False, columns, caption=_caption(estimators[0]) + f"; prefill in {chunk_tokens:,}-token chunks",
         title=f"kvplan cost by token position, {estimators[0].model.name}: batch {sequences}")
