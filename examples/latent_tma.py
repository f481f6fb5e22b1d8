"""gluon_latent's decode loop (MLA over whole caches, 64 heads a program, two warp groups) with its key blocks
copied another way or at another time, timed against kvplan.models.gluon_latent's kernel on a GPU (variants that
lost, kept as working code for the next schedule: TMA descriptors, mbarrier phases carried across a program's
slices, rows past a slice's end zeroed in shared memory).

TMA: each 64-key block arrives as nine 64-column TMA copies (eight of the latent, one of the RoPE key) under one
mbarrier a buffer, issued by one thread, where gluon_latent's 256 threads each issue 18 cp.async copies of 16
bytes and then meet at a barrier. EARLY: the next block's copy is issued before this block's scores, once the block
before has been multiplied, instead of after them. Both as gluon_latent: two buffers, the query block in shared
memory, each warp group scoring its half of a block's keys and holding half of the output columns.

On the H100 at batch 16 x 128k (examples/bench/latent_tma-h100.csv): cp.async 1.33 ms, cp.async EARLY 1.35, TMA
1.41, TMA EARLY 1.39, against gluon_latent's 1.33-1.34 in the same runs: when and how the keys are copied is not what
bounds this loop (README, "Validation on an H100": what Nsight Compute shows bounds it).

    python3 examples/latent_tma.py --out DIR
"""

from __future__ import annotations

import argparse
import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, mbarrier, tma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kvplan.models import gluon_latent as gk
from kvplan.models import triton_decode as td
from kvplan.models.gluon_latent import _block_update, _copy_block, _load_layout, _out_layout, _p_layout, _score_layout
from kvplan.models.gluon_latent import _copy_query, _store_slice
from latent_kernel_variants import csv_recorder  # this folder's


@gluon.jit
def _issue(desc, kv_ptr, bars, k_lat, k_rope, j, count, start, end, limit, grow, L: gl.constexpr, R: gl.constexpr,
           BLOCK: gl.constexpr, TMA: gl.constexpr, load_layout: gl.constexpr):
    """Start copying the slice's block j (keys start .. start + BLOCK of the sequence whose first row is `grow`)
    into buffer (count + j) % 2, count: the blocks this program used before the slice. TMA: nothing past the end."""
    buf = (count + j) % 2
    if TMA:
        bar = bars.index(buf)
        live = start < end
        mbarrier.expect(bar, BLOCK * (L + R) * 2, pred=live)
        for c in gl.static_range(L // 64):
            piece = k_lat.index(buf).slice(c * 64, 64, dim=1)
            tma.async_copy_global_to_shared(desc, [grow + start, c * 64], bar, piece, pred=live)
        tma.async_copy_global_to_shared(desc, [grow + start, L], bar, k_rope.index(buf), pred=live)
    else:
        slot = start + gl.arange(0, BLOCK, layout=gl.SliceLayout(1, load_layout))
        _copy_block(kv_ptr, slot, start, end, limit, k_lat.index(buf), k_rope.index(buf), L, R, BLOCK, False,
                    load_layout)


@gluon.jit
def _land(bars, k_lat, j, count, start, end, L: gl.constexpr, BLOCK: gl.constexpr, TMA: gl.constexpr,
          EARLY: gl.constexpr):
    """Wait until block j has landed and every thread may read it. The TMA copy reads the rows past the slice's
    end (other positions' keys, or anything): they are zeroed, as cp.async's masked copies write them."""
    buf = (count + j) % 2
    if TMA:
        mbarrier.wait(bars.index(buf), ((count + j) // 2) & 1)
        if start + BLOCK > end:
            piece_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [8, 1], [1, 0])
            rows = start + gl.arange(0, BLOCK, layout=gl.SliceLayout(1, piece_layout))
            for c in gl.static_range(L // 64):
                piece = k_lat.index(buf).slice(c * 64, 64, dim=1)
                x = piece.load(piece_layout)
                piece.store(gl.where((rows < end)[:, None], x, gl.zeros_like(x)))
            fence_async_shared()
            gl.thread_barrier()
    else:
        async_copy.wait_group(1 if EARLY else 0)  # EARLY: the next block's copy is already queued behind this one
        gl.thread_barrier()
        fence_async_shared()


@gluon.jit
def _attend(q_ptr, desc, kv_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, q_lat, q_rope, k_lat, k_rope, bars, hb, r, split,
             first, last, seq_rows, splits, count, H: gl.constexpr, L: gl.constexpr, R: gl.constexpr,
             BLOCK: gl.constexpr, TMA: gl.constexpr, EARLY: gl.constexpr):
    """gluon_latent._attend for decode (no gather): heads hb * 64 .. of sequence r over its keys first .. last;
    returns count plus the blocks it used."""
    BLOCK_H: gl.constexpr = 64
    score_layout: gl.constexpr = _score_layout(BLOCK)
    out_layout: gl.constexpr = _out_layout(L)
    p_layout: gl.constexpr = _p_layout(L)
    load_layout: gl.constexpr = _load_layout()
    limit = gl.load(pos_ptr).to(gl.int32)
    end = gl.minimum(gl.minimum(last, limit + 1), seq_rows)
    grow = r * seq_rows
    kv_ptr += grow.to(gl.int64) * (L + R)

    gl.thread_barrier()
    _copy_query(q_ptr, q_lat, q_rope, hb, r, H, L, R, load_layout)
    async_copy.commit_group()
    _issue(desc, kv_ptr, bars, k_lat, k_rope, 0, count, first, end, limit, grow, L, R, BLOCK, TMA, load_layout)
    if TMA:
        async_copy.wait_group(0)
        gl.thread_barrier()
        fence_async_shared()

    m = gl.full([BLOCK_H], -1e30, gl.float32, layout=gl.SliceLayout(1, score_layout))
    l = gl.zeros([BLOCK_H], gl.float32, layout=gl.SliceLayout(1, score_layout))
    acc = gl.zeros([BLOCK_H, L], gl.float32, layout=out_layout)
    zero_scores = gl.zeros([BLOCK_H, BLOCK], gl.float32, layout=score_layout)
    key_in_block = gl.arange(0, BLOCK, layout=gl.SliceLayout(0, score_layout))
    n = gl.cdiv(end - first, BLOCK)
    for i in range(n):
        buf = (count + i) % 2
        start = first + i * BLOCK
        lat_i = k_lat.index(buf)
        if EARLY:
            acc = warpgroup_mma_wait(0, deps=[acc])
            gl.thread_barrier()
            _issue(desc, kv_ptr, bars, k_lat, k_rope, i + 1, count, start + BLOCK, end, limit, grow, L, R, BLOCK, TMA,
                   load_layout)
            _land(bars, k_lat, i, count, start, end, L, BLOCK, TMA, EARLY)
            scores = warpgroup_mma(q_lat, lat_i.permute((1, 0)), zero_scores, use_acc=False, is_async=True)
            scores = warpgroup_mma(q_rope, k_rope.index(buf).permute((1, 0)), scores, is_async=True)
            scores = warpgroup_mma_wait(0, deps=[scores])
        else:
            _land(bars, k_lat, i, count, start, end, L, BLOCK, TMA, EARLY)
            scores = warpgroup_mma(q_lat, lat_i.permute((1, 0)), zero_scores, use_acc=False, is_async=True)
            scores = warpgroup_mma(q_rope, k_rope.index(buf).permute((1, 0)), scores, is_async=True)
            scores, acc = warpgroup_mma_wait(0, deps=[scores, acc])
            gl.thread_barrier()
            _issue(desc, kv_ptr, bars, k_lat, k_rope, i + 1, count, start + BLOCK, end, limit, grow, L, R, BLOCK, TMA,
                   load_layout)
        j = start + key_in_block
        if start + BLOCK > end:
            scores = gl.where((j < end)[None, :], scores, float("-inf"))
        m, l, acc = _block_update(scores, m, l, acc, lat_i, out_layout, p_layout)
    acc = warpgroup_mma_wait(0, deps=[acc])
    async_copy.wait_group(0)

    _store_slice(acc_ptr, m_ptr, l_ptr, acc, m, l, hb, r, split, splits, H, L, out_layout)
    return count + n  # the copy issued past the end was predicated off (TMA): its slot is the next slice's first


@gluon.jit
def _decode_kernel(q_ptr, desc, kv_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, seq_rows, n_keys, splits, blocks_per_program,
                   rows, H: gl.constexpr, L: gl.constexpr, R: gl.constexpr, BLOCK: gl.constexpr, TMA: gl.constexpr,
                   EARLY: gl.constexpr):
    BLOCK_H: gl.constexpr = 64
    tile: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_lat = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_H, L], tile)
    q_rope = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_H, R], tile)
    k_lat = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK, L], tile)
    k_rope = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK, R], tile)
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)
    fence_async_shared()
    gl.thread_barrier()
    hb = gl.program_id(0)
    n_blocks = gl.cdiv(n_keys, BLOCK)
    p = gl.program_id(1)
    g = p * blocks_per_program
    g_end = gl.minimum(g + blocks_per_program, rows * n_blocks)
    count = 0
    while g < g_end:
        r = g // n_blocks
        row_end = gl.minimum(g_end, (r + 1) * n_blocks)
        count = _attend(q_ptr, desc, kv_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, q_lat, q_rope, k_lat, k_rope, bars, hb, r,
                         p - r * n_blocks // blocks_per_program, (g - r * n_blocks) * BLOCK,
                         (row_end - r * n_blocks) * BLOCK, seq_rows, splits, count, H, L, R, BLOCK, TMA, EARLY)
        g = row_end


def decode(q_cat, kv, input_pos, L, tma_, early, per_sm=1, min_keys=2048):
    """gluon_latent.decode's result (each sequence over slots 0 .. input_pos of kv [B, slots, L + R]) in a BALANCED
    grid of the kernel here."""
    B, H, W = q_cat.shape
    slots = kv.size(1)
    block = 64
    programs, per, splits = gk.balanced_split(B, H // 64, slots, block, q_cat.device, per_sm, min_keys)
    acc = torch.empty(B, splits, H, L, device=q_cat.device, dtype=torch.float32)
    m = torch.empty(B, splits, H, device=q_cat.device, dtype=torch.float32)
    l = torch.empty_like(m)
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    desc = TensorDescriptor.from_tensor(kv.view(B * slots, W), [block, 64], layout)
    _decode_kernel[(H // 64, programs)](q_cat, desc, kv, input_pos, acc, m, l, slots, slots, splits, per, B, H=H, L=L,
                                        R=W - L, BLOCK=block, TMA=tma_, EARLY=early, num_warps=8)
    return td._merge(acc, m, l, q_cat.dtype, (per, triton.cdiv(slots, block)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    record = csv_recorder(os.path.join(args.out, "latent_tma.csv"))
    H, L, R = 128, 512, 64
    config = gk.CONFIGS[0] + (1, 2048)
    # (batch, cache slots, position): partial last blocks, rows past the position set to NaN (they must not reach
    # the output), and the timed shape.
    for B, S, position in [(2, 4096, 3000), (3, 5000, 4999), (16, 131072, 131071)]:
        torch.manual_seed(0)
        q = (torch.randn(B, H, L + R, device="cuda") * 0.05).to(torch.bfloat16)
        kv = torch.randn(B, S, L + R, device="cuda").to(torch.bfloat16)
        kv[:, position + 1:] = float("nan")
        pos = torch.tensor([position], device="cuda")
        ref = gk.decode(q, kv, pos, L, None, config)
        flops = B * (position + 1) * H * 2 * (L + R + L)
        for tma_, early in [(False, False), (False, True), (True, False), (True, True)]:
            out = decode(q, kv, pos, L, tma_, early)
            err = (out.float() - ref.float()).abs().max().item()
            ms = triton.testing.do_bench(lambda: decode(q, kv, pos, L, tma_, early), warmup=25, rep=200)
            base = triton.testing.do_bench(lambda: gk.decode(q, kv, pos, L, None, config), warmup=25, rep=200)
            record(shape=f"mla-decode-b{B}-{S}-pos{position}", variant=("tma" if tma_ else "cp.async")
                   + (" early" if early else ""), ms=ms, gluon_latent_ms=base, tflops=flops / ms / 1e9, max_err=err)


if __name__ == "__main__":
    main()
