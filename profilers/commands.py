"""`kvplan profile` and `kvplan calibrate` as library calls: parsed options in, measured rows (or a hardware
profile) out. The CLI parses, calls one of these and prints; warnings reach it through `warn`."""

from __future__ import annotations

import json
import math
from typing import Callable

from kvplan.hardware import GPU
from kvplan.units import InputError


def _ignore(message: str) -> None:
    pass


def estimate_gpu(device, gpu: str, hardware_profile: str | None, warn: Callable[[str], None] = _ignore) -> GPU:
    """The GPU description estimates use: the detected preset (or `gpu`), then the hardware profile; on a CPU
    without a profile, the h100-sxm preset (and a warning saying so)."""
    from kvplan.api import resolve_gpu
    from kvplan.hardware import gpu_from_file

    from .timing import local_gpu

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
    warn("--device cpu without --hardware-profile: latencies are estimated for h100-sxm; "
         "`kvplan calibrate --device cpu` writes a profile of this CPU")
    return resolve_gpu("h100-sxm")


def profile(model: str, attentions: list[str], contexts: list[int], batches: list[int], kv_dtype: str = "bf16",
            layers: int | None = None, device_name: str = "cuda", gpu: str = "auto",
            hardware_profile: str | None = None, out: str | None = None, resume: bool = False, repeats: int = 5,
            cuda_graph: bool = True, count_flops: bool = True, gpus: int = 1, dp: int = 1, ep: int = 1,
            warn: Callable[[str], None] = _ignore) -> list[dict]:
    """Measured rows beside their estimates: the single-device sweep (kvplan.profilers.sweep), or with gpus > 1
    layers over that many processes under torch.distributed (kvplan.profilers.distributed): the attention
    layers tensor-parallel, or data-parallel with dp = gpus, or with ep = gpus one MoE layer expert-parallel
    for each batch's tokens. Rows go to `out` as they finish."""
    if out:
        from kvplan.files import check_writable

        check_writable(out)
    parallel = distributed_layout(gpus, dp, ep)
    if gpus > 1:
        return profile_distributed(model, attentions, contexts, batches, layers, kv_dtype, device_name, gpus, out,
                                   parallel, gpu)
    if resume and not out:
        raise InputError("--resume needs --out FILE (the file to continue)")
    if "," in kv_dtype:
        raise InputError("--kv-dtype takes one format per profile run")
    from kvplan.dtypes import storage_format

    storage_format(kv_dtype)

    from .measure import Settings
    from .memory import check_memory
    from .sweep import Sweep, device_environment, run
    from .timing import default_dtype, pick_device

    device = pick_device(device_name)
    settings = Settings(device=device, dtype=default_dtype(device), repeats=repeats, cuda_graph=cuda_graph,
                        count_flops=count_flops)
    sweep = Sweep(model=model, attentions=attentions or ["native"], contexts=contexts, batches=batches,
                  kv_dtype=kv_dtype, layers=layers, estimate_gpu=estimate_gpu(device, gpu, hardware_profile, warn),
                  settings=settings, env=device_environment(device))
    message = check_memory(sweep)
    if message:
        warn(message)
    return run(sweep, out, resume)


def distributed_layout(gpus: int, dp: int, ep: int) -> str:
    """The layout a profile over `gpus` processes runs: "tp", "dp" (dp = gpus) or "ep" (ep = gpus), one per run."""
    if dp > 1 and ep > 1:
        raise InputError("profile measures one layout per run: --dp N (attention on N data-parallel ranks) or "
                         "--ep N (one MoE layer over N expert-parallel ranks), not both")
    for name, value in (("dp", dp), ("ep", ep)):
        if value > 1 and value != gpus:
            raise InputError(f"--{name} {value} profiles {value} processes, one per GPU: give --gpus {value}")
    return "dp" if dp > 1 else "ep" if ep > 1 else "tp"


def profile_distributed(model: str, attentions: list[str], contexts: list[int], batches: list[int],
                        layers: int | None, kv_dtype: str, device_name: str, gpus: int, out: str | None = None,
                        parallel: str = "tp", gpu: str = "auto") -> list[dict]:
    """Rows of `gpus` local processes under torchrun (kvplan.profilers.distributed), written to `out` too. Under
    ep each batch is the tokens of one forward (a decode step of that many sequences); `gpu` is the preset of
    its communication estimate."""
    from . import distributed
    from .timing import pick_device

    device = pick_device(device_name)
    if device.type == "cuda":
        import torch

        if torch.cuda.device_count() < gpus:
            raise InputError(f"--gpus {gpus} needs {gpus} CUDA GPUs; this machine has {torch.cuda.device_count()}")
    argv = ["--model", model, "--batch", ",".join(map(str, batches)), "--device", device.type,
            "--parallel", parallel]
    if parallel == "ep":
        if attentions:
            raise InputError("--ep profiles the model's MoE layer: it takes no --attention")
        argv += ["--gpu", gpu]
    else:
        argv += ["--context", ",".join(map(str, contexts)), "--layers", str(layers or 1), "--kv-dtype", kv_dtype]
    for spec in attentions:
        argv += ["--attention", spec]
    rows = distributed.launch(gpus, argv)
    if out:
        distributed.write_rows(rows, out)
    return rows


def calibrate(device_name: str = "cuda", gpu: str = "auto", usd_per_hour: float | None = None, repeats: int = 5,
              out: str | None = None, progress: Callable[[str], None] = _ignore) -> dict:
    """Measure the device (kvplan.profilers.calibrate) and return its hardware profile, written to `out` as
    JSON when given (the file --hardware-profile reads)."""
    from .calibrate import calibrate as measure
    from .timing import pick_device

    if usd_per_hour is not None and not 0 < usd_per_hour < math.inf:
        raise InputError(f"--usd-per-hour must be a positive price in $, not {usd_per_hour}")
    if out:
        from kvplan.files import check_writable

        check_writable(out)
    result = measure(pick_device(device_name), gpu, usd_per_hour, repeats, progress=progress)
    if out:
        from kvplan.files import write_atomically

        write_atomically(out, json.dumps(result, indent=1) + "\n")
    return result
