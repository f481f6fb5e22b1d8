"""`kvplan calibrate`: measure the device, and write a hardware profile the roofline can predict latency with.

What is measured
- copy bandwidth: a large device-to-device copy, bytes read + bytes written over the median time;
- dense matmul FLOP/s: an n x n x n product of random (not zero) bf16 matrices (float32 on the CPU);
- the profiler's own kernels on a reference model (a slice of llama-3.1-8b on a GPU), each at two or three
  (batch, context) points: decode steps and whole prefills, timed as `kvplan profile` times them.

What the profile holds, and why
The roofline is seconds = max(linear FLOPs / (peak x compute_efficiency) + attention FLOPs / (peak x
attention_efficiency), bytes / (bandwidth x bandwidth_efficiency)). The peaks stay the datasheet's (on a CPU,
which has no datasheet here, the fastest rates measured: copy bandwidth and decode bytes/s, matmul and prefill
FLOP/s, each benchmark at its fastest sample, since a shared CPU's noise only ever slows a sample), and the
efficiencies are the fractions of those peaks that the profiler's kernels reach on the reference model, so
that the roofline of the reference rows reproduces their measured times:
- bandwidth_efficiency: geometric mean over the decode points of (bytes the estimate says a step reads /
  measured seconds) / peak bandwidth. It includes what a step spends beyond streaming bytes (kernel launch
  gaps, small kernels), which a copy benchmark does not see.
- compute_efficiency, attention_efficiency: the two unknowns of t = L / (peak e_lin) + A / (peak e_attn),
  solved from a short prefill (mostly linear FLOPs L) and a long one (much attention A). If the solution is
  not a pair of fractions in (0, 1] (noise), e_lin is the matmul benchmark's and e_attn is solved from the
  long prefill alone.
The micro-benchmarks and every reference point (measured, predicted by the profile, error) are stored beside.
A rate above its peak (more than 100% of it) is a timing or a model error, never a result: on a GPU the run
stops with MeasurementError naming the point.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import asdict, dataclass, replace

import torch

from kvplan.api import resolve_model
from kvplan.estimator import Estimator
from kvplan.hardware import GPU, get_gpu
from kvplan.units import InputError, MeasurementError

from .measure import Settings, measure_row
from .timing import default_dtype, free_memory, local_gpu, median_seconds

PROFILE_FORMAT = 1


@dataclass(frozen=True)
class Reference:
    """The reference model and the points it is run at."""

    model: str
    attention: str | None
    layers: int
    prefill_points: tuple[tuple[int, int], ...]  # (batch, context): a short and a long prompt
    decode_points: tuple[tuple[int, int], ...]
    copy_bytes: int  # bytes of the copied tensor (read once, written once)
    matmul_n: int


# Prefill at the two ends of the range kvplan is asked about (4k and 128k): the attention share of prefill
# grows with the prompt, so solving from the ends interpolates the middle instead of extrapolating to 128k
# (on the H100, solving from 4k and 32k left every 128k prefill 14-18% slow).
GPU_REFERENCE = Reference("llama-3.1-8b", None, 2, ((1, 4096), (1, 131072)), ((1, 4096), (1, 32768), (8, 32768)),
                          copy_bytes=2 * 2**30, matmul_n=8192)
# The CPU reference keeps the test suite fast: a 1-layer slice of a small model at short contexts.
CPU_REFERENCE = Reference("t6-medium-mha", None, 1, ((1, 128), (1, 1024)), ((1, 128), (2, 1024)),
                          copy_bytes=64 * 2**20, matmul_n=512)


def _seconds(fn, device: torch.device, repeats: int, fastest: bool) -> float:
    median, samples = median_seconds(fn, device, repeats, warmup=3)
    return min(samples) if fastest else median


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int, fastest: bool = False) -> float:
    """Bytes/s of dst.copy_(src): nbytes read plus nbytes written per copy (the median sample, or the fastest)."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _seconds(lambda: dst.copy_(src), device, repeats, fastest)


def matmul_flops(device: torch.device, n: int, dtype: torch.dtype, repeats: int, fastest: bool = False) -> float:
    """FLOP/s of an n x n x n matrix product on random data (2 n^3 FLOPs; the median sample, or the fastest)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _seconds(lambda: torch.mm(a, b, out=out), device, repeats, fastest)


def _flops(point: dict) -> float:
    return point["linear_flops"] + point["attention_flops"]


def _check_below_peaks(gpu: GPU, copy_bw: float, mm_flops: float, decode: list[dict], prefill: list[dict]) -> None:
    """Raise MeasurementError where a rate exceeds the peak it is a fraction of: a timing or model error."""
    rates = [("copy bandwidth", copy_bw, gpu.bandwidth_bytes_per_s, "B/s"),
             ("matmul", mm_flops, gpu.bf16_flops, "FLOP/s")]
    rates += [(f"decode at batch {p['batch']}, context {p['context']}", p["bytes"] / p["seconds"],
               gpu.bandwidth_bytes_per_s, "B/s") for p in decode]
    rates += [(f"prefill at batch {p['batch']}, context {p['context']}", _flops(p) / p["seconds"], gpu.bf16_flops,
               "FLOP/s") for p in prefill]
    for what, rate, peak, unit in rates:
        if rate > peak * (1 + 1e-9):
            raise MeasurementError(f"calibrate: {what} ran at {rate:.4g} {unit}, {rate / peak:.0%} of {gpu.name}'s "
                                   f"peak {peak:.4g} {unit}: a timing or FLOP/byte count is wrong; no profile written")


def _geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _solve_prefill(points: list[dict], peak: float, fallback_linear: float) -> tuple[float, float, str]:
    """(compute_efficiency, attention_efficiency, how) from t_i = L_i / (peak e_l) + A_i / (peak e_a)."""
    (l1, a1, t1), (l2, a2, t2) = [(p["linear_flops"], p["attention_flops"], p["seconds"]) for p in points[:2]]
    det = l1 * a2 - l2 * a1
    if det:
        inv_l = peak * (t1 * a2 - t2 * a1) / det  # 1 / e_l
        inv_a = peak * (l1 * t2 - l2 * t1) / det  # 1 / e_a
        if inv_l >= 1 and inv_a >= 1:
            return 1 / inv_l, 1 / inv_a, "solved from the short and the long prefill"
    remaining = t2 - l2 / (peak * fallback_linear)
    attention = min(1.0, a2 / (peak * remaining)) if remaining > 0 else fallback_linear
    return fallback_linear, attention, "linear at the matmul benchmark's efficiency; attention from the long prefill"


def _kv_dtype(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def _cpu_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_request(device: torch.device, gpu: str, usd_per_hour: float | None) -> None:
    """Refuse what would fail after measuring: a GPU preset on the CPU, a CPU run without a price."""
    if device.type == "cpu":
        if gpu not in ("auto", "cpu"):
            raise InputError("--device cpu measures this CPU; --gpu names a GPU preset and needs --device cuda")
        if usd_per_hour is None:
            raise InputError("a CPU has no preset price: pass --usd-per-hour")
    elif gpu != "auto":
        get_gpu(gpu)


def _base_gpu(device: torch.device, gpu: str, usd_per_hour: float | None, copy_bw: float, mm_flops: float,
              env: dict) -> GPU:
    """Datasheet description of the device (a preset on a GPU; on a CPU, the peaks given: measured)."""
    if device.type == "cpu":
        # One host has no GPU link, so the memory copy rate stands in for it (only tp > 1 estimates use it).
        return GPU("cpu", _cpu_memory_bytes(), copy_bw, mm_flops, 0.0, copy_bw, usd_per_hour,
                   source="measured on this CPU by kvplan calibrate: peaks are the fastest rates measured (float32 "
                          "matmul and prefill FLOP/s in bf16_flops; copy and decode bytes/s)")
    if gpu == "auto":
        base = local_gpu(device)
    else:
        base = replace(get_gpu(gpu), memory_bytes=env.get("gpu_memory_bytes") or get_gpu(gpu).memory_bytes)
    return replace(base, usd_per_hour=usd_per_hour) if usd_per_hour else base


def _reference_rows(ref: Reference, device: torch.device, repeats: int, progress):
    """(the sliced reference Model, [((batch, context), measured figures)])."""
    from kvplan.models import sliced

    full = resolve_model(ref.model, ref.attention)
    desc = sliced(full, ref.layers) if ref.layers < full.n_layers else full
    settings = Settings(device=device, dtype=default_dtype(device), repeats=repeats, count_flops=False)
    rows = []
    for batch, context in sorted(set(ref.prefill_points) | set(ref.decode_points)):
        progress(f"reference model: batch {batch}, context {context}")
        out: dict = {}
        measure_row(desc, batch, context, _kv_dtype(device), settings, out)
        free_memory(device)
        rows.append(((batch, context), out))
    return desc, rows


def calibrate(device: torch.device, gpu: str = "auto", usd_per_hour: float | None = None, repeats: int = 5,
              reference: Reference | None = None, progress=lambda message: None) -> dict:
    """Measure and return the profile (a dict; "gpu" holds the fields `--hardware-profile` reads)."""
    from .sweep import deployment, device_environment

    ref = reference or (GPU_REFERENCE if device.type == "cuda" else CPU_REFERENCE)
    _check_request(device, gpu, usd_per_hour)
    cpu = device.type == "cpu"
    dtype = default_dtype(device)
    env = device_environment(device)
    progress("copy bandwidth")
    copy_bw = copy_bandwidth(device, ref.copy_bytes, repeats, fastest=cpu)
    progress("matmul FLOP/s")
    mm_flops = matmul_flops(device, ref.matmul_n, dtype, repeats, fastest=cpu)
    free_memory(device)
    base = _base_gpu(device, gpu, usd_per_hour, copy_bw, mm_flops, env)

    desc, rows = _reference_rows(ref, device, repeats, progress)
    kv = _kv_dtype(device)
    est = Estimator(desc, deployment(base, kv, dtype))
    measured = dict(rows)
    decode = []
    for batch, context in ref.decode_points:
        seconds = measured[(batch, context)]["decode_seconds_measured"]
        read = est.weights_read_bytes(batch) + est.decode_cache_read_bytes(batch, context)
        decode.append({"batch": batch, "context": context, "seconds": seconds, "bytes": read})
    prefill = []
    for batch, context in ref.prefill_points:
        prefill.append({"batch": batch, "context": context,
                        "seconds": measured[(batch, context)]["prefill_seconds_measured"],
                        "linear_flops": est.prefill_linear_flops(batch, context),
                        "attention_flops": est.prefill_attention_flops(batch, context)})
    if cpu:  # the peaks are the fastest rates seen, the reference model's included
        base = replace(base, bandwidth_bytes_per_s=max([copy_bw] + [p["bytes"] / p["seconds"] for p in decode]),
                       bf16_flops=max([mm_flops] + [_flops(p) / p["seconds"] for p in prefill]))
    for point in decode:
        point["efficiency"] = point["bytes"] / point["seconds"] / base.bandwidth_bytes_per_s
    _check_below_peaks(base, copy_bw, mm_flops, decode, prefill)
    bandwidth_eff = min(1.0, _geometric_mean([p["efficiency"] for p in decode]))
    compute_eff, attention_eff, how = _solve_prefill(prefill, base.bf16_flops, min(1.0, mm_flops / base.bf16_flops))
    calibrated = replace(base, compute_efficiency=compute_eff, bandwidth_efficiency=bandwidth_eff,
                         attention_efficiency=attention_eff,
                         source=f"{base.source}; efficiencies by kvplan calibrate on {env.get('gpu_name')} "
                                f"({datetime.date.today().isoformat()})")
    check = Estimator(desc, deployment(calibrated, kv, dtype))
    for point in decode:
        point["predicted_seconds"] = check.decode_step(point["batch"], point["context"])[1]
        point["error"] = point["predicted_seconds"] / point["seconds"] - 1
    for point in prefill:
        point["predicted_seconds"] = check.prefill(point["batch"], point["context"])[1]
        point["error"] = point["predicted_seconds"] / point["seconds"] - 1
    return {
        "kvplan_profile": PROFILE_FORMAT,
        "gpu": asdict(calibrated),
        "measured": {
            "copy_bandwidth_bytes_per_s": copy_bw,
            "copy_efficiency": copy_bw / base.bandwidth_bytes_per_s,
            "matmul_flops": mm_flops,
            "matmul_efficiency": mm_flops / base.bf16_flops,
            "matmul_n": ref.matmul_n,
            "matmul_dtype": str(dtype).replace("torch.", ""),
            "copy_bytes": ref.copy_bytes,
            "reference_model": f"{ref.model}, first {desc.n_layers} layers ({desc.kind_label})",
            "decode_points": decode,
            "prefill_points": prefill,
            "prefill_fit": how,
        },
        "device": env,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": __doc__.split("What the profile holds, and why")[1].strip(),
    }
