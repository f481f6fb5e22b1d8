"""`kvplan plan`: the cheapest deployment that meets latency targets (kvplan.plan searches; this prints)."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..output import text
from ..plan import DEFAULT_GPUS, DEFAULT_MAX_BATCH, OBJECTIVES
from .options import OutputFormat, output_options, show

PLAN_COLUMNS = [
    ("#", lambda r: str(r["rank"])),
    ("gpu", text("gpu")),
    ("serving", text("serving")),
    ("pools", text("pools")),
    ("kv", text("kv_dtype")),
    ("weights", text("weight_dtype")),
    ("TTFT ms", lambda r: f"{r['ttft_seconds'] * 1e3:,.0f}"),
    ("TPOT ms", lambda r: f"{r['tpot_seconds'] * 1e3:,.1f}"),
    ("tok/s/GPU", lambda r: f"{r['tokens_per_second_per_gpu']:,.0f}"),
    ("tok/s/user", lambda r: f"{r['tokens_per_second_per_user']:,.1f}"),
    ("$/Mtok out", lambda r: f"{r['usd_per_mtok']:,.3f}"),
]


@output_options
def plan(
    options: OutputFormat,
    model: List[str] = typer.Option(..., "--model", "-m", help="Preset, config.json or cached model id; repeat or "
                                    "comma-separate to search several."),
    isl: str = typer.Option(..., "--isl", help="Prompt tokens per request, e.g. 8k (k = 1024)."),
    osl: str = typer.Option(..., "--osl", help="Generated tokens per request, e.g. 1k."),
    ttft: str = typer.Option(..., "--ttft", help="Time to first token at most: one request's prompt on its pool "
                             "(aggregated: alone; disaggregated: with its pool's batch, plus sending the cache), "
                             "e.g. 2s."),
    tpot: str = typer.Option(..., "--tpot", help="Time per output token at most: the decode step of the batch at "
                             "isl + osl/2 tokens (aggregated: plus the prompt chunks of requests joining per step), "
                             "e.g. 50ms."),
    gpu: str = typer.Option(",".join(DEFAULT_GPUS), "--gpu", "-g", help="GPU types to search, comma-separated."),
    max_gpus: int = typer.Option(64, "--max-gpus", help="Most GPUs in one deployment (or pool pair).", min=1),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="Cache formats to search, comma-separated."),
    weight_dtype: str = typer.Option("auto", "--weight-dtype", help="Weight formats to search, comma-separated; "
                                     "auto: as the checkpoint stores them, else bf16."),
    attention: Optional[List[str]] = typer.Option(None, "--attention", "-a", help="Attention re-casts to search "
                                                  "beside the model's own (as estimate's --attention)."),
    disaggregated: bool = typer.Option(False, "--disaggregated", help="Also search prefill/decode pool pairs."),
    cached_prefix: str = typer.Option("0", "--cached-prefix", help="Prompt tokens per request found in a prefix "
                                      "cache (not recomputed)."),
    objective: str = typer.Option("usd_per_mtok", "--objective", help="Rank by: " + "; ".join(
        f"{name} ({meaning})" for name, meaning in OBJECTIVES.items()) + "."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Requests per second to serve (for --objective gpus)."),
    overlap: bool = typer.Option(False, "--overlap", help="Communication hidden behind compute."),
    max_batch: int = typer.Option(DEFAULT_MAX_BATCH, "--max-batch", help="Most sequences per data-parallel rank.", min=1),
    top: int = typer.Option(10, "--top", help="Plans shown (JSON/CSV: every pool of each).", min=1),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write the Pareto fronts (tokens/s per GPU against "
                                       "tokens/s per user) to this PNG."),
) -> None:
    """The cheapest deployments that fit in memory and meet --ttft and --tpot.

    Searched over GPU type and count, tp/pp/dp/ep layout, batch, dtypes, attention re-casts and (with
    --disaggregated) prefill/decode pools."""
    from ..plan import plan_report, workload_for
    from ..recast import split_specs

    workload = workload_for(isl, osl, ttft, tpot, cached_prefix if cached_prefix != "0" else 0)
    attentions = ["native"] + [s for s in split_specs(attention) if s.split(":")[0].strip().lower() != "native"]
    report = plan_report(model, workload, plot=plot, gpu=gpu, max_gpus=max_gpus, kv_dtype=kv_dtype,
                         weight_dtype=weight_dtype, attention=attentions, disaggregated=disaggregated,
                         objective=objective, rate=rate, top=top, max_batch=max_batch, overlap=overlap)
    show(report, options, PLAN_COLUMNS)
