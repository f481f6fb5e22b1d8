"""`kvplan profile` and `kvplan calibrate`: measure on the local GPU (or CPU) and set beside the estimate.

torch and pynvml are imported inside the command bodies only, so `kvplan estimate` stays torch-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from .cli import AttentionOpt, CsvOpt, JsonOpt, ModelOpt, ProfileOpt, app, err
from .units import InputError

# A suggested --layers slice leaves this share of the free memory for what the estimate does not count
# (the torch runtime, allocator rounding, the Python process itself).
SLICE_HEADROOM = 0.8

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
    if out:
        from kvplan.profilers.store import check_out_folder

        check_out_folder(out)
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
    check_memory(sweep)
    rows = run(sweep, out, resume)
    print_rows(rows, as_json, as_csv)


def available_bytes(device) -> int | None:
    """Memory a new network can take now: free GPU memory on CUDA, the kernel's MemAvailable on the CPU
    (free pages, if /proc/meminfo is missing); None where the system does not say."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB, meaning KiB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _row_bytes(est, batch: int, context: int) -> int:
    """What building and prefilling one row holds at its peak, by the estimate: weights + cache + prefill peak."""
    return (est.weights_bytes_per_gpu + est.kv_cache_bytes_per_gpu(batch, context)
            + est.activation_bytes_per_gpu(batch, context))


def check_memory(sweep) -> None:
    """Before any network is built, set each row's estimated bytes against the device's free memory.

    On the CPU a row that cannot fit is refused with one line suggesting --layers N (the kernel would
    otherwise kill the whole process mid-build, losing the sweep). On CUDA an out-of-memory error ends only
    its own row, recorded as does-not-fit (measured), so those rows still run; a warning says which.
    """
    from kvplan.profilers.sweep import plan_rows

    from .units import format_gib

    device = sweep.settings.device
    free = available_bytes(device)
    if free is None:
        return
    too_large = [(identity, est, need) for identity, est, _ in plan_rows(sweep)
                 if (need := _row_bytes(est, identity["batch"], identity["context"])) > free]
    if not too_large:
        return
    if device.type == "cuda":
        err(f"warning: {len(too_large)} row(s) need more than the {format_gib(free)} GiB free on the GPU by the "
            f"estimate; they run anyway and any that runs out of memory is recorded as does not fit (measured)")
        return
    identity, est, need = max(too_large, key=lambda item: item[2])
    batch, context = identity["batch"], identity["context"]
    layers = _layers_that_fit(sweep, int(free * SLICE_HEADROOM))
    advice = (f"profile a slice with --layers {layers}" if layers else
              "even one layer does not fit: lower --batch or --context")
    raise InputError(
        f"{sweep.model} ({identity['attention']}, {identity['layers']} layers) at batch {batch} x context {context} "
        f"needs about {format_gib(need)} GiB on the CPU (weights {format_gib(est.weights_bytes_per_gpu)} + cache "
        f"{format_gib(est.kv_cache_bytes_per_gpu(batch, context))} + prefill peak "
        f"{format_gib(est.activation_bytes_per_gpu(batch, context))} GiB), more than the {format_gib(free)} GiB "
        f"available: {advice}")


def _layers_that_fit(sweep, budget: int) -> int:
    """The deepest slice whose every row fits in `budget` bytes by the estimate (0: not even one layer)."""
    from kvplan.profilers.sweep import plan_rows

    deepest = min(sweep.layers or 10**9, max(identity["full_layers"] for identity, _, _ in plan_rows(sweep)))
    for layers in range(deepest - 1, 0, -1):
        if all(_row_bytes(est, identity["batch"], identity["context"]) <= budget
               for identity, est, _ in plan_rows(replace(sweep, layers=layers))):
            return layers
    return 0


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

    if out:
        from kvplan.profilers.store import check_out_folder

        check_out_folder(out)
    device = pick_device(device_name)
    console = Console(stderr=True)
    with console.status("calibrating") as status:
        result = run_calibration(device, gpu, usd_per_hour, repeats,
                                 progress=lambda message: status.update(f"calibrating: {message}"))
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    if as_json:
        typer.echo(json.dumps(result, indent=1))
    else:
        print_profile(result, out)
