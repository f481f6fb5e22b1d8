"""`kvplan profile` and `kvplan calibrate`: measure on the local GPU (or CPU) and set beside the estimate.

torch and pynvml are imported inside the command bodies only (through kvplan.profilers), so `kvplan estimate`
stays torch-free.
"""

from __future__ import annotations

from typing import Optional

import typer

from .options import DeploymentOptions, deployment_options, err

DeviceOpt = typer.Option("cuda", "--device", metavar="cuda|cpu", help="cuda (the GPU) or cpu (small sizes, for "
                         "tests).")


@deployment_options(include=("model", "gpu", "gpus", "dp", "ep", "kv_dtype", "attention", "hardware_profile"), gpu="auto")
def profile(
    options: DeploymentOptions,
    context: str = typer.Option("4k", "--context", "-c", metavar="TOKENS", help="Tokens per sequence, "
                                "comma-separated (4k = 4096)."),
    batch: str = typer.Option("1", "--batch", "-b", metavar="N", help="Sequences, comma-separated."),
    layers: Optional[int] = typer.Option(None, "--layers", metavar="N", min=1, help="Run only the first N layers (a "
                                         "slice); errors compare the slice with its own estimate, full-depth figures "
                                         "are scaled."),
    device_name: str = DeviceOpt,
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="FILE", help="CSV file holding each finished row "
                                      "at once (checked before measuring starts, rewritten whole per row)."),
    resume: bool = typer.Option(False, "--resume", help="Skip rows already in --out (same model, attention, batch, "
                                "context, kv dtype, layers)."),
    repeats: int = typer.Option(5, "--repeats", metavar="N", min=1, help="Timed samples per latency (the median is "
                                "reported)."),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="Replay decode steps as a CUDA graph."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs with FlopCounterMode (one more prefill)."),
) -> None:
    """Measure cache bytes, prefill peak memory, prefill and decode latency and FLOPs; show each beside its estimate.

    --gpu is the preset the estimate uses. --gpus N > 1 runs the attention layers sharded over N tensor-parallel
    processes under torch.distributed (torchrun; NCCL on cuda, gloo on cpu) and compares per-GPU cache bytes and
    peak memory with the estimate; with --dp N (= --gpus) each process runs whole attention layers on its share of
    the batch; with --ep N (= --gpus) one MoE layer runs with its experts spread over the processes, each --batch
    value the tokens of one forward, and the all-to-all time is set beside the estimate.
    """
    from kvplan.profilers.commands import profile as measure

    from ..recast import split_specs
    from ..units import parse_token_list

    rows = measure(options.model, split_specs(options.attention), parse_token_list(context, "--context"),
                   parse_token_list(batch, "--batch"), options.kv_dtype, layers, device_name, options.gpu,
                   options.hardware_profile, out, resume, repeats, cuda_graph, flops, options.gpus,
                   dp=options.dp, ep=options.ep, warn=lambda message: err(f"warning: {message}"))
    output = options.output
    if options.gpus > 1 and not (output.as_json or output.as_csv):
        from kvplan.profilers.distributed import print_table

        print_table(rows)
    elif options.gpus > 1:
        from ..output import emit

        emit(rows, output.as_json, output.as_csv)
    else:
        from kvplan.profilers.view import print_rows

        print_rows(rows, output.as_json, output.as_csv)


@deployment_options(include=("gpu", "usd_per_hour"), gpu="auto")
def calibrate(
    options: DeploymentOptions,
    device_name: str = DeviceOpt,
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the profile JSON here (for "
                                      "--hardware-profile); checked before measuring starts, written whole."),
    repeats: int = typer.Option(5, "--repeats", min=1, metavar="N", help="Timed samples per figure (the median is "
                                "used; on a CPU the peaks take the fastest)."),
) -> None:
    """Measure memory bandwidth, matmul FLOP/s and the profiler's kernel efficiencies; write a hardware profile.

    The efficiencies are fractions of --gpu's datasheet peaks; on a CPU, where there is no preset, of the
    fastest rates measured, and --usd-per-hour is required. --json prints the whole profile, --csv the
    calibrated GPU's fields as one row (the columns of `kvplan gpus --csv`).
    """
    from rich.console import Console

    from kvplan.profilers.commands import calibrate as measure
    from kvplan.profilers.view import print_profile

    from ..output import emit

    with Console(stderr=True).status("calibrating") as status:
        result = measure(device_name, options.gpu, options.usd_per_hour, repeats, out,
                         progress=lambda message: status.update(f"calibrating: {message}"))
    if options.output.as_json or options.output.as_csv:
        emit(result if options.output.as_json else [result["gpu"]], options.output.as_json, options.output.as_csv)
    else:
        print_profile(result, out)
