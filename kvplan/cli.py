"""The `kvplan` command line. Each command turns options into API calls and prints rows; no formulas here."""

from __future__ import annotations

import os
import sys
import warnings
from typing import List, Optional

import typer

from .units import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="What a context length costs in memory, compute and money, for every kind of attention.")


def err(message: str) -> None:
    typer.echo(f"kvplan: {message}", err=True)


# Options shared by estimate, budget, recommend and cost: one definition, one help text.
ModelOpt = typer.Option(..., "--model", "-m", help="Preset name (see `kvplan models`) or a local config.json file or folder.")
GpuOpt = typer.Option("h100-sxm", "--gpu", "-g", help="GPU preset (see `kvplan gpus`), or 'auto' to detect it through NVML.")
AttentionOpt = typer.Option(None, "--attention", "-a", help="Re-cast attention: KIND[:k=v,...] with KIND in native, mha, mqa, "
                            "gqa, mla, tpa, dsa, window (e.g. tpa:k_rank=2,v_rank=2  gqa:kv_heads=4  window:4096). "
                            "Repeat or comma-separate for one row each.")
KvDtypeOpt = typer.Option("bf16", "--kv-dtype", help="KV cache format: bf16, fp16, fp8, int8, int4, fp32; comma-separate for several.")
GpusOpt = typer.Option(1, "--gpus", help="GPUs in all; tensor parallelism over gpus/pp each.", min=1)
PpOpt = typer.Option(1, "--pp", help="Pipeline-parallel stages.", min=1)
WeightDtypeOpt = typer.Option("bf16", "--weight-dtype", help="Weight format: bf16, fp16, fp8, int8, int4.")
BlockOpt = typer.Option(0, "--block-size", help="Paged KV cache block, tokens (vLLM uses 16); 0 = contiguous.", min=0)
ReserveOpt = typer.Option("0", "--reserve", help="Memory held back per GPU for the CUDA context and workspaces, e.g. 1GiB.")
ChunkOpt = typer.Option("0", "--prefill-chunk", help="Chunked prefill: tokens per prefill forward across the batch (e.g. 8k, "
                        "as vLLM's max_num_batched_tokens); bounds activation memory. 0 = whole prompts at once.")
NaiveOpt = typer.Option(False, "--naive-attention", help="Attention materialises the score matrix (memory quadratic in context).")
ProfileOpt = typer.Option(None, "--hardware-profile", help="JSON file replacing datasheet figures: a `kvplan calibrate` profile, "
                          "or an object of GPU fields (memory_bytes, bandwidth_bytes_per_s, bf16_flops and fp8_flops in "
                          "FLOP/s, link_bytes_per_s, usd_per_hour, compute_efficiency, bandwidth_efficiency); a new GPU "
                          "needs a name and every figure.")
GpuSetOpt = typer.Option(None, "--gpu-set", help="Override one GPU field, FIELD=VALUE (repeatable), e.g. memory_bytes=80GiB, "
                         "bandwidth_bytes_per_s=3.0e12 (bytes/s), bf16_flops=800e12 (FLOP/s), usd_per_hour=2.5 ($).")
PriceOpt = typer.Option(None, "--usd-per-hour", help="Price of one GPU-hour in $ (default: the preset's).")
ComputeEffOpt = typer.Option(None, "--compute-efficiency", help="Fraction of dense bf16 FLOP/s reached (default 0.7).")
BandwidthEffOpt = typer.Option(None, "--bandwidth-efficiency", help="Fraction of memory bandwidth reached (default 0.85).")
JsonOpt = typer.Option(False, "--json", help="Print a JSON list of flat objects, one per row.")
CsvOpt = typer.Option(False, "--csv", help="Print CSV with the same columns as --json.")


def _kv_dtypes(text: str) -> list[str]:
    names = [k.strip() for k in text.split(",") if k.strip()]
    if not names:
        raise InputError(f"--kv-dtype names no format: {text!r}")
    return names


def plan_options(options: dict) -> dict:
    """The shared deployment options of a command (its parameters, e.g. `locals()`) -> keyword arguments of
    kvplan.api.plan. Named options win over --gpu-set."""
    from .hardware import parse_assignments
    from .recast import split_specs
    from .units import parse_bytes, parse_tokens

    named = {k: options[k] for k in ("usd_per_hour", "compute_efficiency", "bandwidth_efficiency")
             if options.get(k) is not None}
    if options.get("memory"):
        named["memory_bytes"] = parse_bytes(options["memory"], "--memory")
    chunk = str(options.get("prefill_chunk") or "0")
    return dict(model=options["model"], gpu=options["gpu"], attention=split_specs(options["attention"]) or None,
                kv_dtype=_kv_dtypes(options["kv_dtype"]), gpus=options["gpus"], pp=options["pp"],
                weight_dtype=options["weight_dtype"], block_size=options["block_size"], reserve=options["reserve"],
                flash=not options["naive_attention"], hardware_profile=options["hardware_profile"],
                prefill_chunk=parse_tokens(chunk, "--prefill-chunk") if chunk != "0" else 0,
                **parse_assignments(options.get("gpu_set") or []), **named)


@app.command()
def estimate(
    model: str = ModelOpt,
    gpu: str = GpuOpt,
    context: str = typer.Option("4k", "--context", "-c", help="Tokens per sequence: 4096, 4k, 128k, 1M (k = 1024); comma-separate for several."),
    batch: str = typer.Option("1", "--batch", "-b", help="Sequences served together; comma-separate for several."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prefill tokens per sequence (default: the whole context)."),
    attention: Optional[List[str]] = AttentionOpt,
    kv_dtype: str = KvDtypeOpt,
    gpus: int = GpusOpt,
    pp: int = PpOpt,
    weight_dtype: str = WeightDtypeOpt,
    block_size: int = BlockOpt,
    reserve: str = ReserveOpt,
    naive_attention: bool = NaiveOpt,
    prefill_chunk: str = ChunkOpt,
    hardware_profile: Optional[str] = ProfileOpt,
    usd_per_hour: Optional[float] = PriceOpt,
    compute_efficiency: Optional[float] = ComputeEffOpt,
    bandwidth_efficiency: Optional[float] = BandwidthEffOpt,
    gpu_set: Optional[List[str]] = GpuSetOpt,
    as_json: bool = JsonOpt,
    as_csv: bool = CsvOpt,
) -> None:
    """KV cache, weights, activations (GiB), FLOPs, roofline latency (s) and $ per million tokens."""
    from .api import plan, plan_warnings
    from .output import ESTIMATE_COLUMNS, emit
    from .units import parse_token_list, parse_tokens

    contexts = parse_token_list(context, "--context")
    batches = parse_token_list(batch, "--batch")
    prompt_tokens = parse_tokens(prompt, "--prompt") if prompt else None
    if prompt_tokens and prompt_tokens > min(contexts):
        raise InputError(f"--prompt ({prompt_tokens}) exceeds --context ({min(contexts)}): the cache holds the context, "
                         f"prompt included")
    if as_json and as_csv:
        raise InputError("give --json or --csv, not both")
    estimators = plan(**plan_options(locals()))
    rows = []
    for estimator in estimators:
        for message in plan_warnings(estimator, contexts):
            err(f"warning: {message}")
        rows += [estimator.row(b, c, prompt_tokens) for c in contexts for b in batches]
    first = estimators[0].deployment
    caption = (f"{first.gpu.name} x{first.gpus} (tp {first.tp}, pp {first.pp}); GiB = 2^30 bytes; roofline at "
               f"{first.gpu.compute_efficiency:.0%} of {first.gpu.bf16_flops / 1e12:,.4g} TFLOP/s and "
               f"{first.gpu.bandwidth_efficiency:.0%} of {first.gpu.bandwidth_bytes_per_s / 1e12:,.2f} TB/s; "
               f"${first.gpu.usd_per_hour:.2f}/GPU-hour")
    emit(rows, as_json, as_csv, ESTIMATE_COLUMNS, title="kvplan estimate", caption=caption)


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """List the bundled model presets and where their numbers come from."""
    from .api import Estimator, deployment_for
    from .hardware import GPUS
    from .output import emit, text
    from .presets import PRESETS, get_preset

    rows = []
    for name in PRESETS:
        m = get_preset(name)
        est = Estimator(m, deployment_for(GPUS["h100-sxm"]))
        rows.append({"name": name, "architecture": m.architecture, "attention": m.kind_label, "layers": m.n_layers,
                     "d_model": m.d_model, "params": m.total_params(), "kv_bytes_per_token_bf16": est.kv_bytes_per_token,
                     "max_positions": m.max_positions, "source": m.source})
    columns = [("name", text("name")), ("attention", text("attention")),
               ("layers", lambda r: str(r["layers"])), ("params (B)", lambda r: f"{r['params'] / 1e9:,.2f}"),
               ("KV KiB/token bf16", lambda r: f"{r['kv_bytes_per_token_bf16'] / 1024:,.1f}"),
               ("source", text("source"))]
    emit(rows, as_json, False, columns, title="kvplan models")


@app.command()
def gpus(as_json: bool = JsonOpt) -> None:
    """List the bundled GPU presets (memory, bandwidth, dense FLOP/s, price) and their sources."""
    from dataclasses import asdict

    from .hardware import GPUS
    from .output import emit, text

    rows = [asdict(g) for g in GPUS.values()]
    columns = [("gpu", text("name")), ("memory GiB", lambda r: f"{r['memory_bytes'] / 2**30:,.1f}"),
               ("TB/s", lambda r: f"{r['bandwidth_bytes_per_s'] / 1e12:,.2f}"),
               ("bf16 TFLOP/s", lambda r: f"{r['bf16_flops'] / 1e12:,.0f}"),
               ("fp8 TFLOP/s", lambda r: f"{r['fp8_flops'] / 1e12:,.0f}" if r["fp8_flops"] else "-"),
               ("link GB/s", lambda r: f"{r['link_bytes_per_s'] / 1e9:,.0f}"),
               ("$/hour", lambda r: f"{r['usd_per_hour']:.2f}"), ("source", text("source"))]
    emit(rows, as_json, False, columns, title="kvplan gpus")


def _click_errors() -> tuple[type, ...]:
    """Click's usage-error classes: typer >= 0.20 vendors click as typer._click, older typer uses click."""
    classes = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            classes.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except ImportError:
            pass
    return tuple(classes)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: bad input ends in one line on stderr and exit status 2, never a traceback."""
    warnings.simplefilter("default")
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # standalone_mode=False hands click's usage errors to us, so they too print as one line.
        code = app(args=args or ["--help"], prog_name="kvplan", standalone_mode=False)
    except InputError as error:
        err(f"error: {error}")
        sys.exit(2)
    except _click_errors() as error:
        err(f"error: {error.format_message()}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the contract is one line, not a traceback
        if os.environ.get("KVPLAN_DEBUG"):
            raise
        if type(error).__name__ == "Abort":  # click's Ctrl-C
            err("interrupted")
            sys.exit(130)
        err(f"internal error: {type(error).__name__}: {error} (set KVPLAN_DEBUG=1 for the traceback)")
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
from . import cli_plan  # noqa: E402,F401  (budget, recommend, cost)
from . import cli_profile  # noqa: E402,F401  (profile, calibrate)
