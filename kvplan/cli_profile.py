"""`kvplan profile` and `kvplan calibrate`: measure on the local GPU (or CPU) and set beside the estimate.

torch and pynvml are imported inside the command bodies only, so `kvplan estimate` stays torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .cli import AttentionOpt, CsvOpt, JsonOpt, ModelOpt, ProfileOpt, app, err
from .units import InputError

DeviceOpt = typer.Option("cuda", "--device", help="cuda (the GPU) or cpu (small sizes, for tests).")


def _estimate_gpu(device, gpu: str, hardware_profile: Optional[str]):
    """The GPU description estimates use: the detected preset (or --gpu), then --hardware-profile."""
    from kvplan.profilers.timing import local_gpu

    from .api import resolve_gpu
    from .hardware import gpu_from_file

    if gpu != "auto":
        return resolve_gpu(gpu, hardware_profile)
    if device.type == "cuda":
        try:
            base = local_gpu(device)
        except InputError:
            if not hardware_profile:
                raise
            base = None
        return gpu_from_file(hardware_profile, base) if hardware_profile else base
    if hardware_profile:
        return gpu_from_file(hardware_profile)
    err("warning: --device cpu without --hardware-profile: latencies are estimated for h100-sxm; "
        "`kvplan calibrate --device cpu` writes a profile of this CPU")
    return resolve_gpu("h100-sxm")


@app.command()
def profile(
    model: str = ModelOpt,
    attention: Optional[List[str]] = AttentionOpt,
    context: str = typer.Option("4k", "--context", "-c", help="Tokens per sequence, comma-separated (4k = 4096)."),
    batch: str = typer.Option("1", "--batch", "-b", help="Sequences, comma-separated."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="Run only the first N layers (a slice); "
                                         "errors compare the slice with its own estimate, full-depth figures are scaled."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV cache format the network stores (bf16, fp16, fp8, fp32)."),
    device_name: str = DeviceOpt,
    gpu: str = typer.Option("auto", "--gpu", "-g", help="GPU preset the estimate uses; auto: detect it through NVML."),
    hardware_profile: Optional[str] = ProfileOpt,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="CSV file each finished row is appended to at once."),
    resume: bool = typer.Option(False, "--resume", help="Skip rows already in --out (same model, attention, batch, "
                                "context, kv dtype, layers)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed samples per latency (the median is reported)."),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="Replay decode steps as a CUDA graph."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs with FlopCounterMode (one more prefill)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Tensor-parallel processes: N > 1 runs the attention layers "
                             "sharded under torch.distributed (torchrun; NCCL on cuda, gloo on cpu) and compares "
                             "per-GPU cache bytes and peak memory with the estimate."),
    as_json: bool = JsonOpt,
    as_csv: bool = CsvOpt,
) -> None:
    """Measure cache bytes, prefill peak memory, prefill and decode latency and FLOPs; show each beside its estimate."""
    from .recast import split_specs
    from .units import parse_token_list

    contexts = parse_token_list(context, "--context")
    batches = parse_token_list(batch, "--batch")
    if gpus > 1:
        _profile_tensor_parallel(model, split_specs(attention), context, batch, layers, kv_dtype, device_name, gpus,
                                 out, as_json, as_csv)
        return
    if resume and not out:
        raise InputError("--resume needs --out FILE (the file to continue)")
    if "," in kv_dtype:
        raise InputError("--kv-dtype takes one format per profile run")
    from .dtypes import storage_format

    storage_format(kv_dtype)

    from kvplan.profilers.measure import Settings
    from kvplan.profilers.sweep import Sweep, device_environment, run
    from kvplan.profilers.timing import default_dtype, pick_device
    from kvplan.profilers.view import print_rows

    device = pick_device(device_name)
    estimate_gpu = _estimate_gpu(device, gpu, hardware_profile)
    settings = Settings(device=device, dtype=default_dtype(device), repeats=repeats, cuda_graph=cuda_graph,
                        count_flops=flops)
    sweep = Sweep(model=model, attentions=split_specs(attention) or ["native"], contexts=contexts, batches=batches,
                  kv_dtype=kv_dtype, layers=layers, estimate_gpu=estimate_gpu, settings=settings,
                  env=device_environment(device))
    rows = run(sweep, out, resume)
    print_rows(rows, as_json, as_csv)


def _profile_tensor_parallel(model, attentions, context, batch, layers, kv_dtype, device_name, gpus, out, as_json,
                             as_csv) -> None:
    """`kvplan profile --gpus N`: torchrun over N local processes (kvplan.profilers.distributed)."""
    from kvplan.profilers import distributed
    from kvplan.profilers.timing import pick_device

    device = pick_device(device_name)
    if device.type == "cuda":
        import torch

        if torch.cuda.device_count() < gpus:
            raise InputError(f"--gpus {gpus} needs {gpus} CUDA GPUs; this machine has {torch.cuda.device_count()}")
    argv = ["--model", model, "--context", context, "--batch", batch, "--layers", str(layers or 1),
            "--device", device.type, "--kv-dtype", kv_dtype]
    for spec in attentions:
        argv += ["--attention", spec]
    rows = distributed.launch(gpus, argv)
    if out:
        distributed.write_rows(rows, out)
    if as_json:
        from .output import print_json

        print_json(rows)
    elif as_csv:
        from .output import print_csv

        print_csv(rows)
    else:
        distributed.print_table(rows)


@app.command()
def calibrate(
    gpu: str = typer.Option("auto", "--gpu", "-g", help="GPU preset whose datasheet peaks the efficiencies are "
                            "fractions of; auto: detect it through NVML."),
    device_name: str = DeviceOpt,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the profile JSON here (for --hardware-profile)."),
    usd_per_hour: Optional[float] = typer.Option(None, "--usd-per-hour", help="Price of one GPU-hour in $ (default: "
                                                 "the preset's; required on a CPU)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed samples per figure (the median is used)."),
    as_json: bool = JsonOpt,
) -> None:
    """Measure memory bandwidth, matmul FLOP/s and the profiler's kernel efficiencies; write a hardware profile."""
    from rich.console import Console

    from kvplan.profilers.calibrate import calibrate as run_calibration
    from kvplan.profilers.timing import pick_device
    from kvplan.profilers.view import print_profile

    device = pick_device(device_name)
    console = Console(stderr=True)
    with console.status("calibrating") as status:
        result = run_calibration(device, gpu, usd_per_hour, repeats,
                                 progress=lambda message: status.update(f"calibrating: {message}"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    if as_json:
        typer.echo(json.dumps(result, indent=1))
    else:
        print_profile(result, out)
