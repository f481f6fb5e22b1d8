"""Other ways to write MLA's absorbed latent-attention loop, timed against kvplan.models' kernels on a GPU.

Two shapes, both DeepSeek's 128 heads, 64 a program: MLA decode over the whole cache (batch 16 x 128k, against
triton_decode.mla_decode) and DSA's sparse prefill over 2048 gathered rows a query (1024 queries of a 32k
prompt, against triton_dsa.sparse_latent_attention). The variants, each checked against the kernel's output
(max_err): the latent split into two 256-wide tiles ("halves", two accumulators); keys loaded through TMA tensor
descriptors ("tma", whole-cache decode only: the descriptor's row count is the slice's end, so rows past it read
as zeros); scores computed transposed, with the keys as the rows of the product ("keys-as-m": two warp groups
then each take their own keys with all 64 heads); those three run with --shapes ...,triton. The Gluon kernel
of kvplan.models.gluon_latent ("gluon": each warp group its own half of the keys' scores, where the Triton
kernel's layout has both warp groups compute all 64 heads' scores; cp.async key blocks) runs at each of its
configs. Writes DIR/latent_kernel_variants.csv after every row.

    python3 examples/latent_kernel_variants.py --out DIR
"""

from __future__ import annotations

import argparse
import csv
import os

import torch
import triton
import triton.language as tl

from kvplan.models import triton_decode as td
from kvplan.models import triton_dsa as tdsa
from kvplan.models import gluon_latent as gk


def _descriptor_memory(size: int, alignment: int, stream):
    """Global memory for the tensor descriptors a kernel builds on the device."""
    return torch.empty(size, device="cuda", dtype=torch.int8)


triton.set_allocator(_descriptor_memory)


@triton.jit
def _variant_kernel(q_ptr, kv_ptr, idx_ptr, acc_ptr, m_ptr, l_ptr, kv_stride_b, n_keys, keys_per_split,
                    splits, H: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK: tl.constexpr, GATHER: tl.constexpr, TMA: tl.constexpr, KEYS_AS_M: tl.constexpr):
    hb = tl.program_id(0)
    b = tl.program_id(1)
    split = tl.program_id(2)
    base = kv_ptr + b.to(tl.int64) * kv_stride_b
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    HALF: tl.constexpr = L // 2
    half = tl.arange(0, HALF)
    rope = tl.arange(0, R)
    q_row = q_ptr + (b * H + heads[:, None]) * (L + R)
    q0 = tl.load(q_row + half[None, :])
    q1 = tl.load(q_row + HALF + half[None, :])
    qr = tl.load(q_row + L + rope[None, :])
    m = tl.full([BLOCK_H], -1e30, tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc0 = tl.zeros([BLOCK_H, HALF], tl.float32)
    acc1 = tl.zeros([BLOCK_H, HALF], tl.float32)
    first = split * keys_per_split
    end = tl.minimum(first + keys_per_split, n_keys)
    if TMA:
        desc = tl.make_tensor_descriptor(base, shape=[end, L + R], strides=[L + R, 1], block_shape=[BLOCK, HALF])
        desc_r = tl.make_tensor_descriptor(base + L, shape=[end, R], strides=[L + R, 1], block_shape=[BLOCK, R])
    for start in range(first, end, BLOCK):
        j = start + tl.arange(0, BLOCK)
        live = j < end
        if TMA:
            k0 = desc.load([start, 0])
            k1 = desc.load([start, HALF])
            kr = desc_r.load([start, 0])
        else:
            if GATHER:
                s = tl.load(idx_ptr + b * n_keys + j, mask=live, other=0).to(tl.int64)
            else:
                s = j.to(tl.int64)
            row = base + s[:, None] * (L + R)
            k0 = tl.load(row + half[None, :], mask=live[:, None], other=0.0)
            k1 = tl.load(row + HALF + half[None, :], mask=live[:, None], other=0.0)
            kr = tl.load(row + L + rope[None, :], mask=live[:, None], other=0.0)
        if KEYS_AS_M:  # scores transposed: [BLOCK keys, BLOCK_H heads], the keys as the product's rows
            st = tl.dot(k0, tl.trans(q0))
            st = tl.dot(k1, tl.trans(q1), st)
            st = tl.dot(kr, tl.trans(qr), st) * 1.4426950408889634
            st = tl.where(live[:, None], st, float("-inf"))
            m_new = tl.maximum(m, tl.max(st, axis=0))
            pt = tl.math.exp2(st - m_new[None, :])
            correction = tl.math.exp2(m - m_new)
            l = l * correction + tl.sum(pt, axis=0)
            p = tl.trans(pt.to(k0.dtype))
        else:
            scores = tl.dot(q0, tl.trans(k0))
            scores = tl.dot(q1, tl.trans(k1), scores)
            scores = tl.dot(qr, tl.trans(kr), scores) * 1.4426950408889634
            scores = tl.where(live[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            p = tl.math.exp2(scores - m_new[:, None])
            correction = tl.math.exp2(m - m_new)
            l = l * correction + tl.sum(p, axis=1)
            p = p.to(k0.dtype)
        acc0 = tl.dot(p, k0, acc0 * correction[:, None])
        acc1 = tl.dot(p, k1, acc1 * correction[:, None])
        m = m_new
    out = (b * splits + split) * H + heads
    tl.store(acc_ptr + out[:, None] * L + half[None, :], acc0)
    tl.store(acc_ptr + out[:, None] * L + HALF + half[None, :], acc1)
    tl.store(m_ptr + out, m * 0.6931471805599453)
    tl.store(l_ptr + out, l)


def variant(q, kv, idx, kv_stride_b, n_keys, config):
    """q [B, H, L + R] (softmax scale folded in), kv rows (L + R wide, sequence b's from row b x kv_stride_b / (L +
    R)); idx [B, n_keys] (rows each sequence attends) or None (all n_keys) -> [B, H, L]. config: (heads a
    program, keys a step, warps, stages, shortest slice, tma, keys_as_m)."""
    block_h, block, warps, stages, min_keys, tma, keys_as_m = config
    B, H, W = q.shape
    L = 512
    head_blocks = H // block_h
    splits, keys_per_split = td._split_keys(B * head_blocks, n_keys, block, q.device, td.MLA_PROGRAMS_PER_SM,
                                            min_keys)
    acc = torch.empty(B, splits, H, L, device=q.device, dtype=torch.float32)
    m = torch.empty(B, splits, H, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    _variant_kernel[(head_blocks, B, splits)](
        q, kv, idx if idx is not None else q, acc, m, l, kv_stride_b, n_keys, keys_per_split,
        splits, H=H, L=L, R=W - L, BLOCK_H=block_h, BLOCK=block, GATHER=idx is not None, TMA=tma, KEYS_AS_M=keys_as_m,
        num_warps=warps, num_stages=stages)
    return td._merge(acc, m, l, q.dtype)


def gluon_variant(q, kv, config, pos=None, idx=None, q_start=None):
    """The Gluon kernel (kvplan.models.gluon_latent); config: one of gluon_latent.CONFIGS, programs an SM and the
    shortest slice. Decode (q_start None): kv [B, slots, L + R], rows past pos do not attend. Sparse prefill:
    query c of q attends to its rows idx[c] of kv [1, T, L + R] up to q_start + c."""
    if q_start is None:
        return gk.decode(q, kv, pos, 512, None, config)
    out = torch.empty(1, *q.shape[:2], 512, device=q.device, dtype=q.dtype)
    return gk.sparse_prefill(q[None], kv, idx[None], q_start, 0, 512, out, config[:-2])[0]


def csv_recorder(path: str):
    """record(**row): prints the row and rewrites `path` with every row recorded so far (nothing lost if a later
    variant fails)."""
    rows = []

    def record(**row):
        rows.append(row)
        print(row, flush=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return record


def bench(fn) -> float:
    """Milliseconds a call (triton.testing.do_bench: CUDA events, L2 flushed between calls)."""
    return triton.testing.do_bench(fn, warmup=25, rep=200)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", default="decode,sparse", help="comma-separated: decode, sparse, triton")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    H, L, R = 128, 512, 64
    record = csv_recorder(os.path.join(args.out, "latent_kernel_variants.csv"))

    shapes = args.shapes.split(",")
    gk.ENABLED = False  # the kernels' own entry points time the Triton kernels alone; Gluon runs as a variant
    # MLA decode: batch 16 x 128k, whole cache.
    B, S = (16, 131072) if not args.quick else (2, 4096)
    if "decode" not in shapes:
        B, S = 1, 4096
    q = (torch.randn(B, H, L + R, device=dev) * 0.05).to(torch.bfloat16)
    kv = torch.randn(B, S, L + R, device=dev).to(torch.bfloat16)
    pos = torch.tensor(S - 1, device=dev)
    ref = td.mla_decode(q, kv, pos, L)
    base_ms = bench(lambda: td.mla_decode(q, kv, pos, L))
    flops = B * S * H * 2 * (L + R + L)
    cache = B * S * (L + R) * 2
    record(shape="mla-decode-b16-128k", variant="main", config=str(td.CHOSEN.get(("mla", B, H, L + R, L, S, S, False,
           torch.bfloat16))), ms=base_ms, tflops=flops / base_ms / 1e9, GBps=cache / base_ms / 1e6, max_err=0.0)
    configs = [(64, 64, 8, 2, 2048, True, False), (64, 64, 8, 2, 2048, True, True), (64, 64, 8, 2, 2048, False, True),
               (64, 128, 8, 1, 2048, True, True), (64, 128, 8, 1, 2048, False, True), (64, 128, 8, 2, 2048, True, True),
               (64, 32, 8, 3, 2048, True, True), (64, 32, 8, 4, 2048, True, True), (64, 64, 8, 2, 1024, True, True)]
    for config in [c + (per_sm, 2048) for c in gk.CONFIGS for per_sm in gk.PROGRAMS_PER_SM] if "decode" in shapes else []:
        try:
            out = gluon_variant(q, kv, config, pos=pos)
            err = (out.float() - ref.float()).abs().max().item()
            ms = bench(lambda: gluon_variant(q, kv, config, pos=pos))
            record(shape="mla-decode-b16-128k", variant="gluon", config=str(config), ms=ms,
                   tflops=flops / ms / 1e9, GBps=cache / ms / 1e6, max_err=err)
        except Exception as error:  # noqa: BLE001
            print("failed gluon", config, type(error).__name__, str(error)[:600], flush=True)
    for config in configs if "decode" in shapes and "triton" in shapes else []:
        try:
            out = variant(q, kv, None, S * (L + R), S, config)
            err = (out.float() - ref.float()).abs().max().item()
            ms = bench(lambda: variant(q, kv, None, S * (L + R), S, config))
            record(shape="mla-decode-b16-128k", variant=("keys-as-m " if config[-1] else "")
                   + ("tma" if config[-2] else "halves"), config=str(config), ms=ms,
                   tflops=flops / ms / 1e9, GBps=cache / ms / 1e6, max_err=err)
        except Exception as error:  # noqa: BLE001
            print("failed", config, type(error).__name__, str(error)[:300], flush=True)
    del kv, ref

    # DSA sparse prefill: 1024 queries of a 32k prompt, 2048 rows each, in position order.
    C, T, K = (1024, 32768, 2048) if not args.quick else (64, 4096, 512)
    latent = torch.randn(1, T, L + R, device=dev).to(torch.bfloat16)
    qc = (torch.randn(1, C, H, L + R, device=dev) * 0.05).to(torch.bfloat16)
    q_start = T - C
    top = torch.stack([torch.randperm(q_start + c + 1, device=dev)[:K].sort().values for c in range(C)])
    top = top.to(torch.int32)[None]
    ref = tdsa.sparse_latent_attention(qc, latent, top, q_start, 0, L, None)
    base_ms = bench(lambda: tdsa.sparse_latent_attention(qc, latent, top, q_start, 0, L, None))
    flops = C * K * H * 2 * (L + R + L)
    record(shape="dsa-sparse-1024q-32k", variant="main", config=str(tdsa.SPARSE_CONFIGS), ms=base_ms,
           tflops=flops / base_ms / 1e9, GBps=0.0, max_err=0.0)
    for config in tdsa.SPARSE_CONFIGS[:3]:
        ms = bench(lambda: tdsa.sparse_latent_attention(qc, latent, top, q_start, 0, L, None, config=config))
        record(shape="dsa-sparse-1024q-32k", variant="main", config=str(config), ms=ms,
               tflops=flops / ms / 1e9, GBps=0.0, max_err=0.0)
    for config in [c + (1, K) for c in gk.CONFIGS]:
        try:
            out = gluon_variant(qc[0], latent, config, idx=top[0], q_start=q_start)
            err = (out.float() - ref[0].float()).abs().max().item()
            ms = bench(lambda: gluon_variant(qc[0], latent, config, idx=top[0], q_start=q_start))
            record(shape="dsa-sparse-1024q-32k", variant="gluon", config=str(config), ms=ms,
                   tflops=flops / ms / 1e9, GBps=0.0, max_err=err)
        except Exception as error:  # noqa: BLE001
            print("failed gluon", config, type(error).__name__, str(error)[:600], flush=True)
    for config in [(64, 64, 8, 3, K, False, False), (64, 64, 8, 2, K, False, False)] if "triton" in shapes else []:
        try:
            out = variant(qc[0], latent, top[0], 0, K, config)
            err = (out.float() - ref[0].float()).abs().max().item()
            ms = bench(lambda: variant(qc[0], latent, top[0], 0, K, config))
            record(shape="dsa-sparse-1024q-32k", variant="keys-as-m" if config[-1] else "halves", config=str(config), ms=ms,
                   tflops=flops / ms / 1e9, GBps=0.0, max_err=err)
        except Exception as error:  # noqa: BLE001
            print("failed", config, type(error).__name__, str(error)[:300], flush=True)


if __name__ == "__main__":
    main()
