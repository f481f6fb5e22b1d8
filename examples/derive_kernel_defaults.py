"""Derive kvplan's default per-operation efficiencies (kvplan.hardware KERNELS) from the kernel timings that
NVIDIA's aiconfigurator 0.12.0 ships (vLLM 0.24 tables; NCCL tables), so every default has a shown source.

Runs where aiconfigurator is installed (`pip install aiconfigurator`; not a kvplan dependency):
    python examples/derive_kernel_defaults.py            # prints one block per GPU

Each fit is a least-squares line through measured latencies, t = call + work / rate:
- GEMM, bf16 and fp8 (per-tensor scaled): compute efficiency = median achieved FLOP/s / peak over m, n, k >= 4096;
  bandwidth efficiency and per-call time from the line through t against weight bytes at m <= 8.
- Prefill attention (32 heads, 8 KV heads, head_dim 128, batch 1, causal): 1 / efficiency is linear in 1 / L,
  1/e(L) = (1 + half / L) / e_max; fitted over L = 1k..16k.
- Decode attention (same heads): t against cache bytes read, batch 1-64, 1k-128k keys.
- NCCL all-reduce (half, 8 GPUs): t against 2 (n-1)/n message bytes, messages of 1 MiB and up.
- MoE (DeepSeek-V3's 256 experts of 7168 x 2048, top 8, balanced, tp 1, ep 1): compute efficiency at 8k tokens.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvplan.hardware import GPUS  # noqa: E402

DATA = Path(__import__("aiconfigurator_core").__file__).parent / "systems" / "data"
SYSTEMS = {"h100-sxm": "h100_sxm", "h200": "h200_sxm", "a100-80gb": "a100_sxm", "l40s": "l40s", "b200": "b200_sxm"}


def table(system: str, pattern: str) -> pd.DataFrame | None:
    paths = sorted(glob.glob(str(DATA / system / pattern)))
    if not paths:
        return None
    data = pd.read_parquet(paths[-1])
    return data if "window_size" in data else data.assign(window_size=0)  # older tables: no windows


def line(x, t):
    """(intercept, slope) of t = a + b x by least squares, weighting each point by 1 / t (relative error)."""
    x, t = np.asarray(x, float), np.asarray(t, float)
    w = 1 / t
    slope, intercept = np.polyfit(x, t, 1, w=w)
    return max(intercept, 0.0), slope


def gemm(system: str, gpu) -> dict:
    d = table(system, "gemm/vllm/*/gemm_perf.parquet")
    out = {}
    for dtype, peak, width in (("bfloat16", gpu.bf16_flops, 2), ("fp8", gpu.fp8_flops, 1)):
        rows = d[d.gemm_dtype == dtype]
        if rows.empty or not peak:
            continue
        seconds = rows.latency * 1e-3
        big = rows[(rows.m >= 4096) & (rows.n >= 4096) & (rows.k >= 4096)]
        compute = float(np.median(2 * big.m * big.n * big.k / (big.latency * 1e-3) / peak))
        small = rows[(rows.m <= 8) & (rows.n * rows.k * width >= 2**20)]
        call, per_byte = line(small.n * small.k * width, small.latency * 1e-3)
        out[dtype] = dict(compute=compute, bandwidth=1 / per_byte / gpu.bandwidth_bytes_per_s, call_seconds=call)
        del seconds
    return out


def prefill_attention(system: str, gpu) -> dict:
    d = table(system, "attention/vllm/*/context_attention_perf.parquet")
    rows = d[(d.batch_size == 1) & (d.num_heads == 32) & (d.num_key_value_heads == 8) & (d.head_dim == 128)
             & (d.kv_cache_dtype == "bfloat16") & (d.window_size == 0) & (d.isl >= 1024)]
    rows = rows.groupby("isl").latency.min()
    length = rows.index.to_numpy(float)
    flops = 4 * 32 * 128 * length * (length + 1) / 2
    efficiency = flops / (rows.to_numpy() * 1e-3) / gpu.bf16_flops
    slope, intercept = np.polyfit(1 / length, 1 / efficiency, 1)
    return dict(compute=1 / intercept, half_tokens=slope / intercept,
                measured={int(n): round(float(e), 3) for n, e in zip(length, efficiency)})


def decode_attention(system: str, gpu) -> dict:
    d = table(system, "attention/vllm/*/generation_attention_perf.parquet")
    rows = d[(d.num_heads == 32) & (d.num_key_value_heads == 8) & (d.head_dim == 128)
             & (d.kv_cache_dtype == "bfloat16") & (d.window_size == 0) & (d.batch_size <= 64) & (d.step >= 1023)]
    rows = rows.groupby(["batch_size", "step"]).latency.min().reset_index()
    read = rows.batch_size * (rows.step + 1) * 2 * 8 * 128 * 2
    call, per_byte = line(read, rows.latency * 1e-3)
    return dict(bandwidth=1 / per_byte / gpu.bandwidth_bytes_per_s, call_seconds=call)


def all_reduce(system: str, gpu) -> dict | None:
    d = table(system, "comm/nccl/*/nccl_perf.parquet")
    if d is None:
        return None
    n = int(d.num_gpus.max())
    rows = d[(d.op_name == "all_reduce") & (d.nccl_dtype == "half") & (d.num_gpus == n)]
    big = rows[rows.message_size >= 2**20]  # message_size counts elements: 2 bytes each in half
    _, per_byte = line(2 * (n - 1) / n * 2 * big.message_size, big.latency * 1e-3)
    latency = float(rows[rows.message_size <= 4096].latency.min() * 1e-3)
    return dict(gpus=n, bandwidth=1 / per_byte / gpu.link_bytes_per_s, call_seconds=latency)


def moe(system: str, gpu) -> dict:
    """Grouped expert GEMMs: compute efficiency at >= 8k tokens, bandwidth at one token (its top-k experts'
    weights read once). fp8: DeepSeek-V3's 256 x (7168 x 2048) top 8; bf16: Mixtral's 8 x (4096 x 14336) top 2."""
    d = table(system, "moe/vllm/*/moe_perf.parquet")
    out = {}
    for dtype, peak, width, (hidden, inter, experts, topk) in (
            ("fp8_block", gpu.fp8_flops, 1, (7168, 2048, 256, 8)), ("bfloat16", gpu.bf16_flops, 2, (4096, 14336, 8, 2))):
        rows = d[(d.moe_dtype == dtype) & (d.hidden_size == hidden) & (d.inter_size == inter)
                 & (d.num_experts == experts) & (d.topk == topk) & (d.moe_tp_size == 1) & (d.moe_ep_size == 1)
                 & (d.distribution == "balanced")]
        big, one = rows[rows.num_tokens >= 8192], rows[rows.num_tokens == 1]
        if big.empty or one.empty or not peak:
            continue
        flops = 2 * 3 * hidden * inter * topk * big.num_tokens
        read = topk * 3 * hidden * inter * width
        out[dtype] = dict(compute=float(np.median(flops / (big.latency * 1e-3) / peak)),
                          bandwidth=float(read / (one.latency.min() * 1e-3) / gpu.bandwidth_bytes_per_s))
    return out


def head_shape(system: str, gpu) -> dict:
    """Prefill attention efficiency at 16k tokens by head_dim (32 heads, batch 1), and the g of
    e(hd) proportional to hd / (hd + g) fitted from head_dim 64 against 128."""
    d = table(system, "attention/vllm/*/context_attention_perf.parquet")
    rows = d[(d.batch_size == 1) & (d.num_heads == 32) & (d.kv_cache_dtype == "bfloat16") & (d.window_size == 0)
             & (d.isl == 16384)]
    best = rows.groupby("head_dim").latency.min()
    eff = {int(hd): float(4 * 32 * hd * 16384 * 16385 / 2 / (t * 1e-3) / gpu.bf16_flops) for hd, t in best.items()}
    r = eff[64] / eff[128]  # = 64 (128 + g) / (128 (64 + g))
    return dict(efficiency=eff, half_head_dim=(64 * 128 - r * 128 * 64) / (r * 128 - 64))


def main() -> None:
    for name, system in SYSTEMS.items():
        gpu = GPUS[name]
        print(f"== {name} ({system}, vLLM tables)")
        for label, fit in (("gemm", gemm), ("prefill_attention", prefill_attention),
                           ("decode_attention", decode_attention), ("all_reduce", all_reduce), ("moe", moe), ("head_shape", head_shape)):
            try:
                print(f"  {label}: {fit(system, gpu)}")
            except (TypeError, ValueError, AttributeError, KeyError, np.linalg.LinAlgError) as error:
                print(f"  {label}: no table ({error})")


if __name__ == "__main__":
    main()
