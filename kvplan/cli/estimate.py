"""`kvplan estimate`, `kvplan models` and `kvplan gpus`: the estimate table and the bundled presets."""

from __future__ import annotations

from typing import Optional

import typer

from ..output import Report, estimate_columns, text
from ..units import InputError
from .options import DeploymentOptions, OutputFormat, deployment_options, output_options, show


@deployment_options()
def estimate(
    options: DeploymentOptions,
    context: str = typer.Option("4k", "--context", "-c", metavar="TOKENS", help="Tokens per sequence: 4096, 4k, "
                                "128k, 1M (k = 1024); comma-separate for several."),
    batch: str = typer.Option("1", "--batch", "-b", metavar="N", help="Sequences served together; comma-separate "
                              "for several."),
    prompt: Optional[str] = typer.Option(None, "--prompt", metavar="TOKENS", help="Prefill tokens per sequence "
                                         "(default: the whole context)."),
    wide: bool = typer.Option(False, "--wide", help="Every column (weights, activations, prefill TFLOP, kv, batch, "
                              "context); the default table shows kv, batch and context only where rows differ."),
) -> None:
    """KV cache, weights, activations (GiB), FLOPs, roofline latency (s) and $ per million tokens."""
    from ..api import estimate_report
    from ..estimator import COLUMNS
    from ..units import parse_token_list, parse_tokens

    contexts = parse_token_list(context, "--context")
    batches = parse_token_list(batch, "--batch")
    prompt_tokens = parse_tokens(prompt, "--prompt") if prompt else None
    if prompt_tokens and prompt_tokens > min(contexts):
        raise InputError(f"--prompt ({prompt_tokens}) exceeds --context ({min(contexts)}): the cache holds the context, "
                         f"prompt included")
    report = estimate_report(options.estimator_arguments(), contexts, batches, prompt_tokens)
    columns, report.title = estimate_columns(report.rows, wide)
    show(report, options.output, columns, fields=list(COLUMNS))


MODEL_COLUMNS = [("name", text("name")), ("attention", text("attention")),
                 ("layers", lambda r: str(r["layers"])), ("params (B)", lambda r: f"{r['params'] / 1e9:,.2f}"),
                 ("active (B)", lambda r: f"{r['active_params'] / 1e9:,.2f}"), ("experts", text("experts")),
                 ("KV KiB/token bf16", lambda r: f"{r['kv_bytes_per_token_bf16'] / 1024:,.1f}"),
                 ("state MiB/seq bf16", lambda r: f"{r['state_bytes_per_sequence_bf16'] / 2**20:,.1f}"
                  if r["state_bytes_per_sequence_bf16"] else ""),
                 ("weights", text("weights_format")), ("source", text("source"))]


@output_options
def models(options: OutputFormat) -> None:
    """List the bundled model presets, how each checkpoint stores its weights, and where their numbers come from."""
    from ..presets import preset_rows

    show(Report(preset_rows(), title="kvplan models"), options, MODEL_COLUMNS)


GPU_COLUMNS = [("gpu", text("name")), ("aliases", text("aliases")),
               ("memory GiB", lambda r: f"{r['memory_bytes'] / 2**30:,.1f}"),
               ("TB/s", lambda r: f"{r['bandwidth_bytes_per_s'] / 1e12:,.2f}"),
               ("bf16 TFLOP/s", lambda r: f"{r['bf16_flops'] / 1e12:,.0f}"),
               ("fp8 TFLOP/s", lambda r: f"{r['fp8_flops'] / 1e12:,.0f}" if r["fp8_flops"] else "-"),
               ("link GB/s", lambda r: f"{r['link_bytes_per_s'] / 1e9:,.0f}"),
               ("$/hour", lambda r: f"{r['usd_per_hour']:.2f}"), ("source", text("source"))]


@output_options
def gpus(options: OutputFormat) -> None:
    """List the bundled GPU presets: memory, bandwidth, dense FLOP/s, price, aliases and sources.

    The aliases are the other names --gpu takes for each preset."""
    from ..hardware import gpu_rows

    show(Report(gpu_rows(), title="kvplan gpus"), options, GPU_COLUMNS)
