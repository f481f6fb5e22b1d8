"""`kvplan calibrate`: measure the device, and write a hardware profile the roofline can predict latency with.

What is measured
- copy bandwidth: a large device-to-device copy, bytes read + bytes written over the median time;
- dense matmul FLOP/s: an n x n x n product of random (not zero) bf16 matrices (float32 on the CPU);
- the profiler's own kernels on a reference model (a slice of llama-3.1-8b on a GPU), each at two or three
  (batch, context) points: decode steps and whole prefills, timed as `kvplan profile` times them.

What the profile holds, and why
The roofline is a sum over operation kinds (kvplan.roofline), each seconds = calls x call_seconds +
max(FLOPs / (peak x compute), bytes / (bandwidth x bandwidth)). The peaks stay the datasheet's (on a CPU,
which has no datasheet here, the measured copy bandwidth and matmul rate), and each kind's figures are solved
from micro-benchmarks of that kind (`solve_kernels`), so the profile's "gpu" object carries the same `kernels`
a preset does:
- gemm: GEMMs of a few shapes; the line t = call + weight bytes / (bandwidth x b) through the skinny ones
  (m <= 16) gives b and the call time; the large ones (m >= 1024) give compute = FLOPs / ((t - call) x peak).
- prefill_attention: causal attention at three lengths L; 1 / e(L) is linear in 1 / L, so the line through
  (1 / L, 1 / e) gives e_max = 1 / intercept and attention_half_tokens = slope / intercept.
- decode_attention: one query over a cache at a few batch x context points, through the decode kernel
  kvplan.models runs (kvplan.models.triton_decode.dense_decode replayed from a CUDA graph, as decode steps
  are timed, where Triton serves the device; else PyTorch's scaled_dot_product_attention);
  t = call + bytes / (bandwidth x b).
- elementwise: a copy; its bandwidth fraction, and the time of a tiny copy as its call time.
The other kinds (fp8 and grouped GEMMs, DSA, communication) keep the preset's figures.
Micro-benchmarks time each kernel alone; the network `kvplan profile` measures also runs unfused norms, RoPE,
the gated activation and residual adds, and its attention inside a layer. So the reference model's prefills
and decode steps (measured as `kvplan profile` measures them) then solve what they cost (`fit_reference`):
- prefill (a short prompt, a long one, and on a GPU a batch of long ones): elementwise bandwidth and prefill
  attention compute, the two scales that make the prefills come out as measured (least squares; the short one
  is mostly GEMMs and elementwise bytes, the long one mostly attention, the batch both at the clocks a long
  run of GEMMs holds under the power limit);
- decode (three steps of growing cache): elementwise call time (a step's many small kernels) and decode
  attention's bandwidth (least squares; its call time stays the micro-benchmark's).
MLA's prefill attention takes the calibrated prefill attention (kvplan.models runs it through the same flash
kernel). MLA's decode attention figures (a call time a layer and the latent scan's bandwidth) stand for the whole
MLA layer's decode besides its projection GEMMs (the absorbed query and output products, the latent and query
kernels, the attention kernel and its merge), so on a GPU they are solved from the reference re-cast to MLA:
its decode steps at the same points, every other figure as fitted above (`fit_latent_decode`). (The attention
kernel alone, timed as a micro-benchmark on an H100, 84% of bandwidth + 23 us, left out the layer's other
kernels: the H100 validation's MLA and DSA decode medians were then -10.6% and -15.6%.)
Each point's prediction with the final profile and its error are stored beside it.
"""

from __future__ import annotations

import datetime
import os
import statistics
from dataclasses import asdict, dataclass, replace

import torch

from kvplan.api import resolve_model
from kvplan.estimator import Estimator
from kvplan.hardware import GPU, get_gpu
from kvplan.roofline import Kernel, Kernels
from kvplan.units import InputError, MeasurementError

from .measure import Settings, graph_replay, measure_row
from .timing import default_dtype, free_memory, local_gpu, median_seconds

PROFILE_FORMAT = 1


@dataclass(frozen=True)
class Reference:
    """The reference model and the points it is run at."""

    model: str
    attention: str | None
    layers: int
    prefill_points: tuple[tuple[int, int], ...]  # (batch, context): short and long prompts
    decode_points: tuple[tuple[int, int], ...]
    copy_bytes: int  # bytes of the copied tensor (read once, written once)
    matmul_n: int
    # Kernel micro-benchmarks (defaults small enough for a CPU): GEMM weight shapes (n, k) run at m = 1, 8 and
    # gemm_large_m tokens; causal attention of `heads` x `head_dim` at each prompt length; one query over a
    # cache at each (batch, context).
    gemm_shapes: tuple[tuple[int, int], ...] = ((256, 256), (512, 512), (512, 1024))
    gemm_large_m: int = 1024
    heads: int = 4
    head_dim: int = 64
    attention_lengths: tuple[int, ...] = (128, 256, 512)
    decode_attention_points: tuple[tuple[int, int], ...] = ((1, 512), (2, 1024), (4, 2048))
    # The reference re-cast to MLA (an --attention spec; None: not run), whose decode steps at decode_points
    # solve MLA decode attention's figures (fit_latent_decode).
    latent_attention: str | None = None


# Prefill at the two ends of the range kvplan is asked about (4k and 128k): the attention share of prefill
# grows with the prompt, so solving from the ends interpolates the middle instead of extrapolating to 128k
# (on the H100, solving from 4k and 32k left every 128k prefill 14-18% slow). And 8 x 32k: a long prefill of many
# tokens holds the GPU at its power limit, which lowers the clocks its GEMMs run at (on an H100, 74% of bf16 peak
# in a 2-layer llama-3.1-8b prefill of 8 x 32k tokens against 81% in short bursts), so the per-token work of the
# 4k prompt alone is priced too fast there; solving from the two ends only left windowed and batch-8 prefills
# 10-12% fast (examples/validation-h100.md). The point is measured anyway, for decode.
GPU_REFERENCE = Reference("llama-3.1-8b", None, 2, ((1, 4096), (8, 32768), (1, 131072)),
                          ((1, 4096), (1, 32768), (8, 32768)),
                          copy_bytes=2 * 2**30, matmul_n=8192,
                          gemm_shapes=((4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (8192, 8192)),
                          gemm_large_m=4096, heads=32, head_dim=128, attention_lengths=(1024, 4096, 16384),
                          decode_attention_points=((1, 4096), (8, 8192), (16, 32768), (32, 32768)),
                          latent_attention="mla")
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


def _check_below_peaks(gpu: GPU, points: dict[str, list[dict]]) -> None:
    """Raise MeasurementError where a measured rate exceeds the peak it is a fraction of (a timing or a FLOP or
    byte count is wrong): GEMM and attention FLOP/s against bf16_flops, decode and copy bytes/s against the
    bandwidth."""
    rates = [(f"gemm {p['m']}x{p['n']}x{p['k']}", 2 * p["m"] * p["n"] * p["k"] / p["seconds"], gpu.bf16_flops,
              "FLOP/s") for p in points["gemm"]]
    rates += [(f"prefill attention at {p['tokens']} tokens", p["flops"] / p["seconds"], gpu.bf16_flops, "FLOP/s")
              for p in points["prefill_attention"]]
    rates += [(f"decode attention at batch {p['batch']}, context {p['context']}", p["bytes"] / p["seconds"],
               gpu.bandwidth_bytes_per_s, "B/s") for p in points["decode_attention"]]
    rates += [(f"copy of {p['bytes']} bytes", p["bytes"] / p["seconds"], gpu.bandwidth_bytes_per_s, "B/s")
              for p in points["copy"]]
    for what, rate, peak, unit in rates:
        if rate > peak * (1 + 1e-9):
            raise MeasurementError(f"calibrate: {what} ran at {rate:.4g} {unit}, {rate / peak:.0%} of {gpu.name}'s "
                                   f"peak {peak:.4g} {unit}: a timing or FLOP/byte count is wrong; no profile written")


def time_gemms(device: torch.device, dtype: torch.dtype, ref: Reference, repeats: int) -> list[dict]:
    """x @ w.T for each weight shape (n, k) at m = 1, 8 and ref.gemm_large_m tokens."""
    points = []
    for n, k in ref.gemm_shapes:
        weight = torch.randn(n, k, device=device, dtype=dtype)
        for m in (1, 8, ref.gemm_large_m):
            x = torch.randn(m, k, device=device, dtype=dtype)
            seconds, _ = median_seconds(lambda: torch.nn.functional.linear(x, weight), device, repeats, warmup=3)
            points.append({"m": m, "n": n, "k": k, "bytes_per_element": weight.element_size(), "seconds": seconds})
        del weight
        free_memory(device)
    return points


def time_prefill_attention(device: torch.device, dtype: torch.dtype, ref: Reference, repeats: int) -> list[dict]:
    """Causal attention of one sequence at each length: 4 x heads x head_dim FLOPs per (query, key) pair."""
    points = []
    for length in ref.attention_lengths:
        q, k, v = (torch.randn(1, ref.heads, length, ref.head_dim, device=device, dtype=dtype) for _ in range(3))
        seconds, _ = median_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                                    device, repeats, warmup=2)
        points.append({"tokens": length, "seconds": seconds,
                       "flops": 4 * ref.heads * ref.head_dim * length * (length + 1) // 2})
        del q, k, v
        free_memory(device)
    return points


def _decode_kernels(device: torch.device):
    """kvplan.models.triton_decode where its kernels serve this device, else None."""
    from kvplan.models import triton_decode

    return triton_decode if triton_decode.enabled(torch.empty(0, device=device)) else None


def time_decode_attention(device: torch.device, dtype: torch.dtype, ref: Reference, repeats: int) -> list[dict]:
    """One query per sequence over a cache of `context` keys and values: bytes = the cache read."""
    points, kernels = [], _decode_kernels(device)
    for batch, context in ref.decode_attention_points:
        q = torch.randn(batch, ref.heads, 1, ref.head_dim, device=device, dtype=dtype)
        k, v = (torch.randn(batch, ref.heads, context, ref.head_dim, device=device, dtype=dtype) for _ in range(2))
        if kernels is None:
            def step():
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            position, scale = torch.tensor([context - 1], device=device), ref.head_dim ** -0.5

            def kernel():
                return kernels.dense_decode(q[:, :, 0], k, v, position, scale)
            kernel()  # tunes its launch config on this shape
            step, _ = graph_replay(kernel)
        seconds, _ = median_seconds(step, device, repeats, warmup=2)
        del step
        points.append({"batch": batch, "context": context, "seconds": seconds,
                       "bytes": 2 * k.numel() * k.element_size()})
        del q, k, v
        free_memory(device)
    return points


def time_copies(device: torch.device, ref: Reference, repeats: int) -> list[dict]:
    """A 64 KiB and a ref.copy_bytes device copy: bytes read + written, seconds."""
    points = []
    for nbytes in (2**16, ref.copy_bytes):
        src = torch.rand(nbytes // 4, device=device)
        dst = torch.empty_like(src)
        seconds, _ = median_seconds(lambda: dst.copy_(src), device, repeats, warmup=3)
        points.append({"bytes": 2 * src.nbytes, "seconds": seconds})
        del src, dst
    free_memory(device)
    return points


def solve_kernels(base: GPU, gemm: list[dict], attention: list[dict], decode: list[dict], copies: list[dict]):
    """The base GPU's kernels with the measured kinds replaced (roofline.Kernels); the rest stay the preset's."""
    kernels = base.kernels
    e_max, half = solve_prefill_attention(attention, base.bf16_flops)
    decode_kernel = solve_streaming(decode, base.bandwidth_bytes_per_s)
    return replace(kernels, gemm=solve_gemm(gemm, base.bf16_flops, base.bandwidth_bytes_per_s),
                   prefill_attention=replace(kernels.prefill_attention, compute=e_max),
                   attention_half_tokens=half,
                   attention_half_head_dim=kernels.attention_half_head_dim,
                   decode_attention=replace(kernels.decode_attention, bandwidth=decode_kernel.bandwidth,
                                            call_seconds=decode_kernel.call_seconds),
                   elementwise=solve_streaming(copies, base.bandwidth_bytes_per_s))


def _solve_two(rows: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """(x, y) minimising sum (a x + b y - t)^2 over rows (a, b, t); None when a and b cannot be told apart."""
    saa = sum(a * a for a, _, _ in rows)
    sab = sum(a * b for a, b, _ in rows)
    sbb = sum(b * b for _, b, _ in rows)
    sat = sum(a * t for a, _, t in rows)
    sbt = sum(b * t for _, b, t in rows)
    det = saa * sbb - sab * sab
    if det <= 1e-12 * max(saa * sbb, 1e-300):
        return None
    return (sat * sbb - sbt * sab) / det, (saa * sbt - sab * sat) / det


def _scaled(kernel: Kernel, scale: float, compute: bool) -> Kernel:
    """`kernel` taking `scale` times as long per FLOP (compute) or per byte, each fraction kept in (0, 1]."""
    if compute:
        return replace(kernel, compute=_fraction(kernel.compute / scale))
    return replace(kernel, bandwidth=_fraction(kernel.bandwidth / scale))


def fit_reference(kernels: Kernels, estimator_for, prefill: list[dict], decode: list[dict],
                  rounds: int = 4) -> Kernels:
    """`kernels` with elementwise and attention figures solved so the reference network's measured points come
    out as measured: each prefill point {"batch", "context", "seconds"} solves the elementwise bandwidth and
    prefill attention compute (scales of those two operations' seconds), each decode point the elementwise
    call time and decode attention's seconds per byte. `estimator_for(kernels)` gives the reference model's
    Estimator. Prefill and decode share the elementwise kernel, so the two solves alternate for a few rounds;
    a solve that cannot tell its two unknowns apart (or gives a negative one) leaves its kernels unchanged."""
    for _ in range(rounds):
        est = estimator_for(kernels)
        rows = []
        for p in prefill:
            row = est.row(p["batch"], p["context"])
            e, a = row["prefill_elementwise_seconds"], row["prefill_attention_seconds"]
            rows.append((e, a, p["seconds"] - (row["prefill_seconds"] - e - a)))
        scales = _solve_two(rows)
        if scales and min(scales) > 0:
            kernels = replace(kernels, elementwise=_scaled(kernels.elementwise, scales[0], compute=False),
                              prefill_attention=_scaled(kernels.prefill_attention, scales[1], compute=True))
        # Decode: seconds are linear in the elementwise call time (calls x call_seconds) and in decode
        # attention's seconds per byte; the call count comes from the estimate at two call times. Every step
        # makes the same calls, so decode attention's own call time (the micro-benchmark's) cannot be told
        # apart from the elementwise one and is kept.
        attention = kernels.decode_attention
        quiet = replace(kernels, elementwise=replace(kernels.elementwise, call_seconds=0.0))
        probe = kernels.elementwise.call_seconds or 1e-6
        bytes_only = estimator_for(replace(quiet, decode_attention=replace(attention, call_seconds=0.0)))
        with_calls = estimator_for(replace(kernels, elementwise=replace(kernels.elementwise, call_seconds=probe),
                                           decode_attention=replace(attention, call_seconds=0.0)))
        with_attention_calls = estimator_for(quiet)
        rows = []
        for p in decode:
            base = bytes_only.row(p["batch"], p["context"])
            calls = (with_calls.row(p["batch"], p["context"])["decode_elementwise_seconds"]
                     - base["decode_elementwise_seconds"]) / probe
            attention_calls = (with_attention_calls.row(p["batch"], p["context"])["decode_seconds_per_token"]
                               - base["decode_seconds_per_token"])
            d = base["decode_attention_seconds"]
            rows.append((calls, d, p["seconds"] - attention_calls - (base["decode_seconds_per_token"] - d)))
        solved = _solve_two(rows)
        if solved and min(solved) > 0:
            call_seconds, scale = solved
            kernels = replace(kernels, elementwise=replace(kernels.elementwise, call_seconds=call_seconds),
                              decode_attention=_scaled(attention, scale, compute=False))
    return kernels


def fit_latent_decode(kernels: Kernels, estimator_for, decode: list[dict]) -> Kernels:
    """`kernels` with MLA decode attention's call time and bandwidth solved so an MLA network's measured decode
    steps ({"batch", "context", "seconds"}) come out as measured, every other figure kept: each step's seconds
    are the rest of the step plus calls x call_seconds plus the latent scan's bytes x seconds per byte
    (`estimator_for(kernels)` gives the MLA network's Estimator). A solve that cannot tell the two apart (or
    gives a negative one) leaves the kernels unchanged."""
    latent = kernels.mla_decode_attention
    probe = latent.call_seconds or 1e-6
    without = estimator_for(replace(kernels, mla_decode_attention=replace(latent, call_seconds=0.0)))
    with_calls = estimator_for(replace(kernels, mla_decode_attention=replace(latent, call_seconds=probe)))
    rows = []
    for p in decode:
        base = without.row(p["batch"], p["context"])
        calls = (with_calls.row(p["batch"], p["context"])["decode_attention_seconds"]
                 - base["decode_attention_seconds"]) / probe
        scan = base["decode_attention_seconds"]
        rows.append((calls, scan, p["seconds"] - (base["decode_seconds_per_token"] - scan)))
    solved = _solve_two(rows)
    if not solved or min(solved) <= 0:
        return kernels
    call_seconds, scale = solved
    return replace(kernels, mla_decode_attention=replace(_scaled(latent, scale, compute=False),
                                                         call_seconds=call_seconds))


def fit_line(xs: list[float], ts: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line t = intercept + slope x; the intercept is kept >= 0."""
    n = len(xs)
    mx, mt = sum(xs) / n, sum(ts) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, ts)) / sxx
    return max(mt - slope * mx, 0.0), slope


def _fraction(value: float) -> float:
    return min(1.0, max(value, 1e-3))


def solve_gemm(points: list[dict], peak_flops: float, peak_bandwidth: float) -> Kernel:
    """A GEMM kernel from timed shapes {"m", "n", "k", "bytes_per_element", "seconds"}: bandwidth and call time
    from the skinny ones (m <= 16, weight bytes n k w), compute from the large ones (m >= 1024)."""
    skinny = [p for p in points if p["m"] <= 16]
    call, per_byte = fit_line([p["n"] * p["k"] * p["bytes_per_element"] for p in skinny], [p["seconds"] for p in skinny])
    large = [2 * p["m"] * p["n"] * p["k"] / (max(p["seconds"] - call, 1e-12) * peak_flops)
             for p in points if p["m"] >= 1024]
    return Kernel(_fraction(statistics.median(large)), _fraction(1 / (per_byte * peak_bandwidth)), call)


def solve_prefill_attention(points: list[dict], peak_flops: float) -> tuple[float, float]:
    """(e_max, half_tokens) of e(L) = e_max L / (L + half) from {"tokens", "flops", "seconds"} at several L."""
    inverse = [(1 / p["tokens"], p["seconds"] * peak_flops / p["flops"]) for p in points]
    intercept, slope = fit_line([x for x, _ in inverse], [y for _, y in inverse])
    if intercept <= 0 or slope < 0:  # noise: the longest prompt's efficiency, flat in length
        longest = max(points, key=lambda p: p["tokens"])
        return _fraction(longest["flops"] / (longest["seconds"] * peak_flops)), 0.0
    return _fraction(1 / intercept), slope / intercept


def solve_streaming(points: list[dict], peak_bandwidth: float) -> Kernel:
    """A bandwidth-bound kernel from {"bytes", "seconds"}: t = call + bytes / (peak x bandwidth)."""
    call, per_byte = fit_line([p["bytes"] for p in points], [p["seconds"] for p in points])
    return Kernel(1.0, _fraction(1 / (per_byte * peak_bandwidth)), call)


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


def _reference_rows(ref: Reference, device: torch.device, repeats: int, progress, attention: str | None = None,
                    points=None):
    """(the sliced reference Model, re-cast to `attention` if given, [((batch, context), measured figures)] at
    `points`, by default every prefill and decode point)."""
    from kvplan.models import sliced

    full = resolve_model(ref.model, attention or ref.attention)
    desc = sliced(full, ref.layers) if ref.layers < full.n_layers else full
    settings = Settings(device=device, dtype=default_dtype(device), repeats=repeats, count_flops=False)
    rows = []
    for batch, context in sorted(points or set(ref.prefill_points) | set(ref.decode_points)):
        progress(f"reference model{f' ({attention})' if attention else ''}: batch {batch}, context {context}")
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

    progress("kernels: GEMMs, prefill and decode attention, copies")
    kernel_points = {"gemm": time_gemms(device, dtype, ref, repeats),
                     "prefill_attention": time_prefill_attention(device, dtype, ref, repeats),
                     "decode_attention": time_decode_attention(device, dtype, ref, repeats),
                     "copy": time_copies(device, ref, repeats)}
    if not cpu:  # a CPU's peaks are the rates measured here, so only a GPU's datasheet can be exceeded
        _check_below_peaks(base, kernel_points)
    kernels = solve_kernels(base, *kernel_points.values())
    calibrated = replace(base, compute_efficiency=None, bandwidth_efficiency=None, attention_efficiency=None,
                         kernels=replace(kernels, source=f"gemm, prefill and decode attention, elementwise: kvplan "
                                         f"calibrate on {env.get('gpu_name')} ({datetime.date.today().isoformat()}); "
                                         f"the rest: {base.kernels.source or 'none'}"),
                         source=f"{base.source}; kernels by kvplan calibrate on {env.get('gpu_name')}")

    desc, rows = _reference_rows(ref, device, repeats, progress)
    kv = _kv_dtype(device)
    measured = dict(rows)
    decode = [{"batch": b, "context": c, "seconds": measured[(b, c)]["decode_seconds_measured"]}
              for b, c in ref.decode_points]
    prefill = [{"batch": b, "context": c, "seconds": measured[(b, c)]["prefill_seconds_measured"]}
               for b, c in ref.prefill_points]
    fitted = fit_reference(calibrated.kernels, lambda k: Estimator(desc, deployment(replace(calibrated, kernels=k),
                                                                                     kv, dtype)), prefill, decode)
    # kvplan.models runs MLA's prefill attention through the same flash kernel as every other kind (the latents
    # expanded to heads), so the calibrated prefill attention stands for MLA's too.
    fitted = replace(fitted, mla_prefill_attention=fitted.prefill_attention,
                     mla_half_tokens=fitted.attention_half_tokens)
    latent_points, latent_note = [], ""
    if ref.latent_attention and not cpu:
        latent_desc, latent_rows = _reference_rows(ref, device, repeats, progress, ref.latent_attention,
                                                   ref.decode_points)
        latent_points = [{"batch": b, "context": c, "seconds": out["decode_seconds_measured"]}
                         for (b, c), out in latent_rows]
        fitted = fit_latent_decode(fitted, lambda k: Estimator(latent_desc, deployment(
            replace(calibrated, kernels=k), kv, dtype)), latent_points)
        latent_note = (f"; MLA decode attention solved from the reference re-cast to {ref.latent_attention}'s "
                       f"measured decode steps")
    calibrated = replace(calibrated, kernels=replace(fitted, source=f"{fitted.source}; elementwise and attention "
                         f"solved from the reference model's measured prefills and decode steps ({ref.model}, "
                         f"first {desc.n_layers} layers); MLA prefill attention as the calibrated prefill "
                         f"attention (the same flash kernel in kvplan.models){latent_note}"))
    check = Estimator(desc, deployment(calibrated, kv, dtype))
    for point in decode:
        point["predicted_seconds"] = check.decode_step(point["batch"], point["context"])[1]
        point["error"] = point["predicted_seconds"] / point["seconds"] - 1
    for point in prefill:
        point["predicted_seconds"] = check.prefill(point["batch"], point["context"])[1]
        point["error"] = point["predicted_seconds"] / point["seconds"] - 1
    if latent_points:
        latent_check = Estimator(latent_desc, deployment(calibrated, kv, dtype))
        for point in latent_points:
            point["predicted_seconds"] = latent_check.decode_step(point["batch"], point["context"])[1]
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
            "latent_decode_points": latent_points,
            "kernel_points": kernel_points,
        },
        "device": env,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": __doc__.split("What the profile holds, and why")[1].strip(),
    }
