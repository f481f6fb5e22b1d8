"""The profile sweep: every (attention, context, batch) measured, set beside its estimate, saved at once.

An out-of-memory error ends only its own row: the row is recorded as "does not fit (measured)" (with the
phase it struck in) beside the estimate's fits verdict, memory is freed and the sweep goes on.
"""

from __future__ import annotations

import datetime
import itertools
import time
from dataclasses import dataclass, field, replace

import torch

from kvplan.api import deployment_for, resolve_model
from kvplan.dtypes import FORMATS
from kvplan.estimator import Deployment, Estimator
from kvplan.hardware import GPU
from kvplan.units import InputError

from .compare import FIGURES, SCALED, compare
from .measure import Settings, measure_row
from .store import ResultsFile, row_key
from .timing import free_memory

DOES_NOT_FIT = "does not fit (measured)"

ID_COLUMNS = ["model", "attention", "attention_kind", "layers", "full_layers", "batch", "context", "kv_dtype",
              "device", "dtype", "status", "phase", "decode_mode"]
FIGURE_COLUMNS = [f"{name}_{part}" for name in FIGURES for part in ("measured", "estimate", "error")]
EXTRA_COLUMNS = (["prefill_flops_causal_estimate", "cache_live_bytes_measured", "resident_bytes_measured",
                  "total_bytes_per_gpu_estimate", "fits_estimate", "fits_full_depth_estimate"]
                 + [f"{name}_full_depth" for name in SCALED])
ENV_COLUMNS = ["gpu_name", "gpu_memory_bytes", "driver", "sm_clock_mhz", "max_sm_clock_mhz", "memory_clock_mhz",
               "power_watts", "power_limit_watts", "torch_version", "estimate_gpu", "compute_efficiency",
               "bandwidth_efficiency", "attention_efficiency", "finished_at"]
COLUMNS = ID_COLUMNS + FIGURE_COLUMNS + EXTRA_COLUMNS + ENV_COLUMNS


@dataclass
class Sweep:
    model: str
    attentions: list[str]  # re-cast specs; "native" = the model as published
    contexts: list[int]
    batches: list[int]
    kv_dtype: str = "bf16"
    layers: int | None = None  # run the first `layers` layers; None: all
    estimate_gpu: GPU | None = None
    settings: Settings | None = None
    env: dict = field(default_factory=dict)


def device_environment(device: torch.device) -> dict:
    """GPU name, memory, clocks, power and driver (pynvml where it answers, torch otherwise)."""
    env = {"torch_version": torch.__version__}
    if device.type != "cuda":
        return {**env, "gpu_name": "cpu"}
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    env.update(gpu_name=props.name, gpu_memory_bytes=props.total_memory)
    try:
        from kvplan.gpu_detect import nvml_info

        info = nvml_info(index)
        env.update({k: v for k, v in info.items() if k not in ("name", "memory_bytes")}, gpu_name=info["name"],
                   gpu_memory_bytes=info["memory_bytes"])
    except Exception:  # noqa: BLE001 - NVML missing or refusing: torch's answer stands
        pass
    return env


def deployment(gpu: GPU, kv_dtype: str, dtype: torch.dtype) -> Deployment:
    """One GPU, the cache format asked for, weights and activations in the dtype the network runs in, whole
    prompts prefilled at once and routed experts run one at a time, as kvplan.models runs them."""
    compute = "fp32" if dtype == torch.float32 else "bf16"
    dep = deployment_for(gpu, kv_dtype=kv_dtype, weight_dtype=compute, prefill_chunk=0)
    return replace(dep, activation_format=FORMATS[compute], fused_moe=False)


def plan_rows(sweep: Sweep):
    """(row identity, sliced-model Estimator, full-model Estimator) for every configuration, in sweep order."""
    from kvplan.models import sliced

    dep = deployment(sweep.estimate_gpu, sweep.kv_dtype, sweep.settings.dtype)
    for spec in sweep.attentions:
        full = resolve_model(sweep.model, None if spec == "native" else spec)
        if full.is_encoder:
            raise InputError(f"{full.name} is an encoder; kvplan.models builds causal decoders, so it cannot be "
                             f"profiled against its (bidirectional, decode-free) estimate")
        layers = min(sweep.layers or full.n_layers, full.n_layers)
        part = sliced(full, layers) if layers < full.n_layers else full
        est, est_full = Estimator(part, dep), Estimator(full, dep)
        for context, batch in itertools.product(sweep.contexts, sweep.batches):
            identity = {"model": sweep.model, "attention": spec, "attention_kind": full.kind_label, "layers": layers,
                        "full_layers": full.n_layers, "batch": batch, "context": context, "kv_dtype": sweep.kv_dtype}
            yield identity, est, est_full


def _measure(identity: dict, est: Estimator, settings: Settings) -> dict:
    """Measure one row; an out-of-memory error leaves its partial figures and the status."""
    row = dict(identity, device=settings.device.type, dtype=str(settings.dtype).replace("torch.", ""))
    oom = None
    try:
        measure_row(est.model, identity["batch"], identity["context"], identity["kv_dtype"], settings, row)
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        oom = str(error).splitlines()[0] if str(error) else type(error).__name__
    # Outside the except block the traceback (and the tensors its frames hold) is gone: now memory can go back.
    free_memory(settings.device)
    if oom is not None:
        row["status"] = f"{DOES_NOT_FIT} in {row.get('phase', 'build')}"
    elif row.pop("prefill_oom", None):
        row["status"] = f"{DOES_NOT_FIT} in prefill (decode step measured)"
    else:
        row["status"] = "ok"
    return row


def run(sweep: Sweep, out_path: str | None = None, resume: bool = False, progress: bool = True,
        deadline: float | None = None) -> list[dict]:
    """Run the sweep; returns every row (those skipped on --resume are read back from the file).
    No row starts after `deadline` (a time.monotonic() value)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .store import read_rows

    results = ResultsFile(out_path, COLUMNS, resume) if out_path else None
    planned = list(plan_rows(sweep))
    done = results.done if results else set()
    previous = {row_key(r): r for r in read_rows(out_path)} if results and resume else {}
    env = {**sweep.env, "estimate_gpu": sweep.estimate_gpu.name,
           # The per-operation roofline's headline figures: bf16 GEMM compute and bandwidth, prefill attention.
           "compute_efficiency": sweep.estimate_gpu.kernel_figures.gemm.compute,
           "bandwidth_efficiency": sweep.estimate_gpu.kernel_figures.gemm.bandwidth,
           "attention_efficiency": sweep.estimate_gpu.kernel_figures.prefill_attention.compute}
    rows = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("profile", total=len(planned))
        for identity, est, est_full in planned:
            key = row_key(identity)
            if key in done:
                rows.append(previous[key])
                bar.advance(task)
                continue
            if deadline is not None and time.monotonic() > deadline:
                break
            bar.update(task, description=f"{identity['attention']} batch {identity['batch']} context {identity['context']}")
            row = _measure(identity, est, sweep.settings)
            compare(row, est, est_full)
            row.update(env, finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            if results:
                results.append(row)
            rows.append(row)
            bar.advance(task)
    return rows
