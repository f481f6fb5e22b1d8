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
- MoE (DeepSeek-V3's 256 experts of 7168 x 2048, top 8, balanced, tp 1, ep 1): compute efficiency at 8k tokens;
  bandwidth and time per call (moe_small): the line through t against the bytes of the experts 1-32 tokens
  select, at moe_tp 8 (experts 256 wide, DeepSeek-V3 on 8 GPUs), its intercept over MOE_CALLS_PER_LAYER calls;
  its slope capped at the datasheet bandwidth (fp8 tables exceed it: their small batches select fewer experts
  than uniform routing predicts).
- MLA (vLLM's DeepSeek-V3 attention block at 16 heads per GPU, tp 8; fp8 block-scaled projections, bf16 cache):
  the module tables time the whole block; the remainder after kvplan's price of its projection GEMMs (two
  calls of gemm_fp8 on their FLOPs and weight bytes) is fitted as attention: prefill (batch 1, L = 1k-32k)
  r(L) = call + F(L) (1 + half / L) / (peak e_max), F the causal pair FLOPs; decode (batch 1-64, 1k-128k
  keys) r = call + latent bytes read / (bandwidth x b).
- All-to-all: t against the bytes each GPU sends to the others. H100: examples/ep2-h100.csv (NCCL
  all_to_all_single of DeepSeek-V3's dispatch and combine on 2 H100s over NVLink, 64 and 4096 tokens); H200:
  aiconfigurator's vLLM DeepEP low-latency table (DeepSeek-V3's dispatch in fp8 and combine in bf16, ep 8,
  1-256 tokens per GPU).
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
MLA_HEADS = 16  # DeepSeek-V3's 128 heads on 8 GPUs
H, Q_RANK, KV_RANK, ROPE, NOPE, V = 7168, 1536, 512, 64, 128, 128  # DeepSeek-V3's MLA
MOE_CALLS_PER_LAYER = 2
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


def moe_small(system: str, gpu) -> dict:
    """Grouped expert GEMMs at 1-32 tokens: the line through t against the selected experts' bytes."""
    d = table(system, "moe/vllm/*/moe_perf.parquet")
    out = {}
    for dtype, width, (hidden, inter, experts, topk) in (
            ("fp8_block", 1, (7168, 2048, 256, 8)), ("bfloat16", 2, (4096, 14336, 8, 2))):
        rows = d[(d.moe_dtype == dtype) & (d.hidden_size == hidden) & (d.inter_size == inter)
                 & (d.num_experts == experts) & (d.topk == topk) & (d.moe_tp_size == 8) & (d.moe_ep_size == 1)
                 & (d.distribution == "balanced") & (d.num_tokens <= 32)]
        if rows.empty:
            continue
        rows = rows.groupby("num_tokens").latency.min()
        tokens = rows.index.to_numpy(float)
        read = experts * (1 - (1 - topk / experts) ** tokens) * 3 * hidden * inter / 8 * width
        call, per_byte = line(read, rows.to_numpy() * 1e-3)
        out[dtype] = dict(bandwidth=min(1 / per_byte / gpu.bandwidth_bytes_per_s, 1.0),
                          call_seconds=call / MOE_CALLS_PER_LAYER)
    return out


def _mla_projections(gpu, tokens):
    """kvplan's seconds for the MLA block's projection GEMMs at 16 heads (two gemm_fp8 calls, as the roofline
    prices a layer's query/key/value and output projections)."""
    fp8 = gpu.fp8_flops > 0
    kernel, peak = (gpu.kernels.gemm_fp8, gpu.fp8_flops) if fp8 else (gpu.kernels.gemm, gpu.bf16_flops)
    h = MLA_HEADS
    params = H * (Q_RANK + KV_RANK + ROPE) + Q_RANK * h * (NOPE + ROPE) + KV_RANK * h * (NOPE + V) + h * V * H
    return 2 * kernel.call_seconds + np.maximum(2 * tokens * params / (peak * kernel.compute),
                                                params * (1 if fp8 else 2) / (gpu.bandwidth_bytes_per_s * kernel.bandwidth))


def _mla_rows(system: str, gpu, phase: str) -> pd.DataFrame | None:
    d = table(system, f"mla/vllm/*/mla_{phase}_module_perf.parquet")
    if d is None:
        return None
    return d[(d.num_heads == MLA_HEADS) & (d.gemm_type == ("fp8_block" if gpu.fp8_flops else "bfloat16"))
             & (d.kv_cache_dtype == "bfloat16")]


def mla_prefill(system: str, gpu) -> dict:
    rows = _mla_rows(system, gpu, "context")
    rows = rows[(rows.batch_size == 1) & (rows.isl >= 1024)].groupby("isl").latency.min()
    length, seconds = rows.index.to_numpy(float), rows.to_numpy() * 1e-3
    rest = seconds - _mla_projections(gpu, length)
    flops = (2 * MLA_HEADS * (NOPE + ROPE) + 2 * MLA_HEADS * V) * length * (length + 1) / 2
    terms = np.stack([np.ones_like(length), flops, flops / length], 1)
    w = 1 / seconds
    (call, per_flop, per_flop_half), *_ = np.linalg.lstsq(terms * w[:, None], rest * w, rcond=None)
    return dict(compute=1 / (per_flop * gpu.bf16_flops), half_tokens=per_flop_half / per_flop, call_seconds=call)


def mla_decode(system: str, gpu) -> dict:
    rows = _mla_rows(system, gpu, "generation")
    rows = rows[(rows.batch_size <= 64) & (rows.step >= 1023)].groupby(["batch_size", "step"]).latency.min().reset_index()
    seconds = rows.latency.to_numpy() * 1e-3
    rest = seconds - _mla_projections(gpu, rows.batch_size.to_numpy(float))
    read = rows.batch_size * (rows.step + 1) * (KV_RANK + ROPE) * 2
    per_byte, call = np.polyfit(read, rest, 1, w=1 / seconds)
    return dict(bandwidth=1 / per_byte / gpu.bandwidth_bytes_per_s, call_seconds=call)


def all_to_all(gpu) -> dict:
    """NCCL all-to-all on 2 H100s (examples/ep2-h100.csv): t = call + bytes sent to the other GPU / (link x b)."""
    d = pd.read_csv(Path(__file__).with_name("ep2-h100.csv"))
    sent = np.concatenate([d.dispatch_bytes_remote, d.combine_bytes_remote])
    seconds = np.concatenate([d.dispatch_seconds, d.combine_seconds])
    call, per_byte = line(sent, seconds)
    return dict(bandwidth=1 / per_byte / gpu.link_bytes_per_s, call_seconds=call)


def deepep(system: str, gpu) -> dict:
    """DeepEP low-latency all-to-all on 8 GPUs: t = call + bytes sent to the other 7 / (link x b)."""
    d = table(system, "comm/vllm/*/moe_a2a_perf.parquet")
    rows = d[(d.comm_backend == "deepep_ll") & (d.hidden_size == H) & (d.topk == 8) & (d.num_experts == 256)
             & (d.ep_size == 8)].groupby(["phase", "num_tokens"]).latency.min().reset_index()
    element_bytes = np.where(rows.phase == "dispatch", 1 + 4 / 128, 2.0)  # fp8 with a scale per 128; bf16
    sent = rows.num_tokens * 8 * H * element_bytes * 7 / 8
    call, per_byte = line(sent, rows.latency * 1e-6)
    return dict(bandwidth=1 / per_byte / gpu.link_bytes_per_s, call_seconds=call)


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
        for label, fit in (("moe_small", moe_small), ("mla_prefill", mla_prefill), ("mla_decode", mla_decode),
                           ("all_to_all_deepep", deepep)):
            try:
                print(f"  {label}: {fit(system, gpu)}")
            except (TypeError, ValueError, AttributeError, KeyError, np.linalg.LinAlgError) as error:
                print(f"  {label}: no table ({error})")
    print(f"== h100-sxm all_to_all (examples/ep2-h100.csv): {all_to_all(GPUS['h100-sxm'])}")


if __name__ == "__main__":
    main()
