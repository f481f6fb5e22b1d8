"""FlashMLA's "seesaw" schedule for the 128-head latent loop, written in Gluon, timed against
kvplan.models.gluon_latent's kernel on a GPU (a variant that lost: kept as the starting point for the next one).

Two warp groups of four warps (gl.warp_specialize): warp group 0 scores the even 64-key block of each pair, warp
group 1 the odd one, each against the whole 64-head query block (products 64 keys wide, where gluon_latent splits
each block's keys between the warp groups); the running maximum passes 0 -> 1, each warp group keeps half of the
output columns and adds both blocks' P x latent to it, P passed through shared memory in the block's RoPE columns
once its scores are done (deepseek-ai/FlashMLA, docs/20250422-new-kernel-deep-dive.md). Each key buffer's columns
are copied by cp.async in two groups, each by the warp group that reads them last, as soon as it has. The same
contract as gluon_latent's kernel (decode over whole caches in BALANCED grids, DSA's sparse prefill over gathered
rows), checked against the Triton kernels' outputs.

On the H100 (examples/bench/latent_seesaw-h100.csv): batch 16 x 128k decode 1.75 ms against gluon_latent's 1.35 ms
(1.79-1.87 against 1.33 in the runs before); the sparse chunk (1024 queries x 2048 rows) 2.11 ms against 1.49 ms. The next
pair's even block can only be copied once warp group 1 has used it, late in the pair, so its copy latency and the
warp groups' own cp.async issue sit on the critical path; FlashMLA copies 64-column pieces by TMA and starts the
scores on each as it lands.

    python3 examples/latent_seesaw.py --out DIR
"""

from __future__ import annotations

import argparse
import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, mbarrier
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait

from kvplan.models import gluon_latent as gk
from kvplan.models import triton_decode as td
from kvplan.models import triton_dsa as tdsa
from kvplan.models.gluon_latent import _block_slots
from latent_kernel_variants import csv_recorder  # this folder's

@gluon.constexpr_function
def _score_layout():
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])

@gluon.constexpr_function
def _out_layout(half):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, half, 16])

@gluon.constexpr_function
def _load_layout():
    return gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8], warps_per_cta=[4, 1], order=[1, 0])

@gluon.jit
def _copy_columns(kv_ptr, idx_row, start, end, limit, lat_buf, rope_buf, bar, COL: gl.constexpr, WIDTH: gl.constexpr,
             ROPE: gl.constexpr, L: gl.constexpr, R: gl.constexpr, GATHER: gl.constexpr):
    """Columns COL .. COL + WIDTH of key block start .. start + 64 (and its RoPE columns, ROPE) into lat_buf
    (rope_buf); `bar` completes when they have landed. Rows that do not attend are written as zeros."""
    load_layout: gl.constexpr = _load_layout()
    slots = _block_slots(idx_row, start, end, 64, GATHER, gl.SliceLayout(1, load_layout))
    j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, load_layout))
    live = j < end
    if GATHER:
        live = live & (slots <= limit)
    row = kv_ptr + slots.to(gl.int64)[:, None] * (L + R)
    cols = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, load_layout))
    async_copy.async_copy_global_to_shared(lat_buf.slice(COL, WIDTH, dim=1), row + COL + cols[None, :],
                                           mask=live[:, None])
    if ROPE:
        rope = gl.arange(0, R, layout=gl.SliceLayout(0, load_layout))
        async_copy.async_copy_global_to_shared(rope_buf, row + L + rope[None, :], mask=live[:, None])
    async_copy.mbarrier_arrive(bar)
    mbarrier.arrive(bar, count=1)

@gluon.jit
def _seesaw_slice(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope, msg0,
              msg1, bars, hb, r, split, first, last, pair, slice_no, seq_rows, queries, limit_first, k_first, n_keys,
              splits, H: gl.constexpr, L: gl.constexpr, R: gl.constexpr, GATHER: gl.constexpr,
              LIMIT_FROM_POS: gl.constexpr, DIRECT: gl.constexpr, ASCENDING: gl.constexpr, WG: gl.constexpr):
    """Warp group WG's part of query row r over keys first .. last, in pairs of 64-key blocks: warp group 0
    scores the even block (buffer 0), warp group 1 the odd one (buffer 1); the running maximum passes 0 -> 1,
    each warp group adds both blocks' P x latent to its half of the output columns (FlashMLA's "seesaw").
    Buffer columns 0 .. L/2 of block 0, and 0 .. L/2 and RoPE of block 1, are copied by warp group 0 once it
    has read them; the rest by warp group 1. A block's P goes to the other warp group in its RoPE columns."""
    LOG2E: gl.constexpr = 1.4426950408889634
    HALF: gl.constexpr = L // 2
    score_layout: gl.constexpr = _score_layout()
    out_layout: gl.constexpr = _out_layout(HALF)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=out_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, score_layout)
    msg0_ready = bars.index(4)
    msg1_ready = bars.index(5)
    p0_ready = bars.index(6)
    q_ready = bars.index(7)
    q_free = bars.index(8)
    if LIMIT_FROM_POS:
        limit = gl.load(pos_ptr).to(gl.int32)
    else:
        limit = limit_first + r % queries
    limit -= k_first
    if GATHER:
        end = gl.minimum(last, n_keys)
        if ASCENDING:
            end = gl.minimum(end, limit + 1)
    else:
        end = gl.minimum(gl.minimum(last, limit + 1), seq_rows)
    n_pairs = gl.maximum(gl.cdiv(end - first, 128), 0)
    kv_ptr += ((r // queries).to(gl.int64) * seq_rows + k_first) * (L + R)
    idx_row = idx_ptr + r.to(gl.int64) * n_keys

    # The slice's query block (warp group 0) and its first pair of key blocks.
    if WG == 0:
        mbarrier.wait(q_free, (slice_no & 1) ^ 1)
        load_layout: gl.constexpr = _load_layout()
        heads = hb * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, load_layout))
        q_row = q_ptr + (r.to(gl.int64) * H + heads)[:, None] * (L + R)
        async_copy.async_copy_global_to_shared(q_lat, q_row + gl.arange(0, L, layout=gl.SliceLayout(0, load_layout))[None, :])
        async_copy.async_copy_global_to_shared(q_rope, q_row + L + gl.arange(0, R, layout=gl.SliceLayout(0, load_layout))[None, :])
        async_copy.mbarrier_arrive(q_ready)
        mbarrier.arrive(q_ready, count=1)
        if n_pairs > 0:
            _copy_columns(kv_ptr, idx_row, first, end, limit, k_lat.index(0), k_rope.index(0), bars.index(0), 0,
                     HALF, False, L, R, GATHER)
            _copy_columns(kv_ptr, idx_row, first + 64, end, limit, k_lat.index(1), k_rope.index(1), bars.index(1), 0,
                     HALF, True, L, R, GATHER)
    else:
        if n_pairs > 0:
            _copy_columns(kv_ptr, idx_row, first, end, limit, k_lat.index(0), k_rope.index(0), bars.index(2), HALF,
                     HALF, True, L, R, GATHER)
            _copy_columns(kv_ptr, idx_row, first + 64, end, limit, k_lat.index(1), k_rope.index(1), bars.index(3),
                     HALF, HALF, False, L, R, GATHER)
    mbarrier.wait(q_ready, slice_no & 1)

    m = gl.full([64], -1e30, gl.float32, layout=row_layout)
    l = gl.zeros([64], gl.float32, layout=row_layout)
    acc = gl.zeros([64, HALF], gl.float32, layout=out_layout)
    zero_scores = gl.zeros([64, 64], gl.float32, layout=score_layout)
    key_in_block = gl.arange(0, 64, layout=gl.SliceLayout(0, score_layout))
    for jj in range(n_pairs):
        phase = (pair + jj) & 1
        mine = first + (2 * jj + WG) * 64  # the block this warp group scores
        j = mine + key_in_block
        if GATHER:
            live = (j < end) & (gl.load(idx_row + j, mask=j < end, other=0) <= limit)
        else:
            live = j < end
        # Scores of block `mine` against the whole query, its first-copied columns first.
        if WG == 0:
            mbarrier.wait(bars.index(0), phase)
            fence_async_shared()
            s = warpgroup_mma(q_lat.slice(0, HALF, dim=1), k_lat.index(0).slice(0, HALF, dim=1).permute((1, 0)),
                              zero_scores, use_acc=False, is_async=True)
            mbarrier.wait(bars.index(2), phase)
            fence_async_shared()
            s = warpgroup_mma(q_lat.slice(HALF, HALF, dim=1),
                              k_lat.index(0).slice(HALF, HALF, dim=1).permute((1, 0)), s, is_async=True)
            s = warpgroup_mma(q_rope, k_rope.index(0).permute((1, 0)), s, is_async=True)
        else:
            mbarrier.wait(bars.index(3), phase)
            fence_async_shared()
            s = warpgroup_mma(q_lat.slice(HALF, HALF, dim=1),
                              k_lat.index(1).slice(HALF, HALF, dim=1).permute((1, 0)), zero_scores, use_acc=False,
                              is_async=True)
            mbarrier.wait(bars.index(1), phase)
            fence_async_shared()
            s = warpgroup_mma(q_lat.slice(0, HALF, dim=1), k_lat.index(1).slice(0, HALF, dim=1).permute((1, 0)),
                              s, is_async=True)
            s = warpgroup_mma(q_rope, k_rope.index(1).permute((1, 0)), s, is_async=True)
        s = warpgroup_mma_wait(0, deps=[s])
        s = gl.where(live[None, :], s, float("-inf"))
        if jj == n_pairs - 1:
            mbarrier.arrive(q_free, count=1)  # this warp group's last read of the query block in the slice
        more = jj + 1 < n_pairs
        nxt = first + (2 * jj + 2) * 64
        if WG == 0:
            m_new = gl.maximum(m, gl.max(s, axis=1))
            scale0 = gl.exp2((m - m_new) * LOG2E)
            p0 = gl.exp2(s * LOG2E - (m_new * LOG2E)[:, None])
            sum0 = gl.sum(p0, axis=1)
            msg0.index(0).store(m_new)
            msg0.index(1).store(scale0)
            msg0.index(2).store(sum0)
            mbarrier.arrive(msg0_ready, count=1)
            acc = acc * gl.convert_layout(scale0, gl.SliceLayout(1, out_layout))[:, None]
            acc = warpgroup_mma(gl.convert_layout(p0.to(gl.bfloat16), p_layout),
                                k_lat.index(0).slice(0, HALF, dim=1), acc, is_async=True)
            mbarrier.wait(msg1_ready, phase)
            m1 = msg1.index(0).load(row_layout)
            scale1 = msg1.index(1).load(row_layout)
            sum1 = msg1.index(2).load(row_layout)
            acc = warpgroup_mma_wait(0, deps=[acc])
            if more:  # block 0's first half read by its last reader: the next even block's goes in
                _copy_columns(kv_ptr, idx_row, nxt, end, limit, k_lat.index(0), k_rope.index(0), bars.index(0), 0,
                         HALF, False, L, R, GATHER)
            k_rope.index(0).store((p0 * scale1[:, None]).to(gl.bfloat16))  # P0 at the odd block's maximum
            fence_async_shared()
            mbarrier.arrive(p0_ready, count=1)
            acc = acc * gl.convert_layout(scale1, gl.SliceLayout(1, out_layout))[:, None]
            acc = warpgroup_mma(k_rope.index(1), k_lat.index(1).slice(0, HALF, dim=1), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            if more:
                _copy_columns(kv_ptr, idx_row, nxt + 64, end, limit, k_lat.index(1), k_rope.index(1),
                         bars.index(1), 0, HALF, True, L, R, GATHER)
            l = (l * scale0 + sum0) * scale1 + sum1
            m = m1
        else:
            mbarrier.wait(msg0_ready, phase)
            m0 = msg0.index(0).load(row_layout)
            scale0 = msg0.index(1).load(row_layout)
            sum0 = msg0.index(2).load(row_layout)
            m_new = gl.maximum(m0, gl.max(s, axis=1))
            scale1 = gl.exp2((m0 - m_new) * LOG2E)
            p1 = gl.exp2(s * LOG2E - (m_new * LOG2E)[:, None])
            sum1 = gl.sum(p1, axis=1)
            k_rope.index(1).store(p1.to(gl.bfloat16))
            msg1.index(0).store(m_new)
            msg1.index(1).store(scale1)
            msg1.index(2).store(sum1)
            fence_async_shared()
            mbarrier.arrive(msg1_ready, count=1)
            acc = acc * gl.convert_layout(scale0 * scale1, gl.SliceLayout(1, out_layout))[:, None]
            acc = warpgroup_mma(gl.convert_layout(p1.to(gl.bfloat16), p_layout),
                                k_lat.index(1).slice(HALF, HALF, dim=1), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            if more:  # block 1's second half read by its last reader
                _copy_columns(kv_ptr, idx_row, nxt + 64, end, limit, k_lat.index(1), k_rope.index(1), bars.index(3),
                         HALF, HALF, False, L, R, GATHER)
            mbarrier.wait(p0_ready, phase)
            fence_async_shared()
            acc = warpgroup_mma(k_rope.index(0), k_lat.index(0).slice(HALF, HALF, dim=1), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            if more:
                _copy_columns(kv_ptr, idx_row, nxt, end, limit, k_lat.index(0), k_rope.index(0), bars.index(2),
                         HALF, HALF, True, L, R, GATHER)
            l = (l * scale0 + sum0) * scale1 + sum1
            m = m_new

    l_out = gl.convert_layout(l, gl.SliceLayout(1, out_layout))
    heads_out = hb * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, out_layout))
    cols = WG * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, out_layout))
    if DIRECT:
        out = (r.to(gl.int64) * H + heads_out)[:, None] * L + cols[None, :]
        gl.store(out_ptr + out, (acc / l_out[:, None]).to(out_ptr.dtype.element_ty))
    else:
        out = (r * splits + split) * H + heads_out
        gl.store(acc_ptr + out.to(gl.int64)[:, None] * L + cols[None, :], acc)
        if WG == 0:
            gl.store(m_ptr + out, gl.convert_layout(m, gl.SliceLayout(1, out_layout)))
            gl.store(l_ptr + out, l_out)
    return pair + n_pairs

@gluon.jit
def _seesaw_part(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope, msg0,
             msg1, bars, seq_rows, queries, limit_first, k_first, n_keys, keys_per_split, splits,
             blocks_per_program, rows, H: gl.constexpr, L: gl.constexpr, R: gl.constexpr, GATHER: gl.constexpr,
             LIMIT_FROM_POS: gl.constexpr, DIRECT: gl.constexpr, BALANCED: gl.constexpr,
             ASCENDING: gl.constexpr, WG: gl.constexpr):
    hb = gl.program_id(0)
    pair = gl.program_id(0) * 0
    if BALANCED:
        n_blocks = gl.cdiv(n_keys, 64)
        p = gl.program_id(1)
        g = p * blocks_per_program
        g_end = gl.minimum(g + blocks_per_program, rows * n_blocks)
        slice_no = pair
        while g < g_end:
            r = g // n_blocks
            row_end = gl.minimum(g_end, (r + 1) * n_blocks)
            pair = _seesaw_slice(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat,
                             k_rope, msg0, msg1, bars, hb, r, p - r * n_blocks // blocks_per_program,
                             (g - r * n_blocks) * 64, (row_end - r * n_blocks) * 64, pair, slice_no, seq_rows,
                             queries, limit_first, k_first, n_keys, splits, H, L, R, GATHER, LIMIT_FROM_POS,
                             DIRECT, ASCENDING, WG)
            slice_no += 1
            g = row_end
    else:
        split = gl.program_id(2)
        _seesaw_slice(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope,
                  msg0, msg1, bars, hb, gl.program_id(1), split, split * keys_per_split,
                  (split + 1) * keys_per_split, pair, pair, seq_rows, queries, limit_first, k_first, n_keys,
                  splits, H, L, R, GATHER, LIMIT_FROM_POS, DIRECT, ASCENDING, WG)

@gluon.jit
def _seesaw_kernel(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, seq_rows, queries,
                   limit_first, k_first, n_keys, keys_per_split, splits, blocks_per_program, rows,
                   H: gl.constexpr, L: gl.constexpr, R: gl.constexpr, BLOCK: gl.constexpr, BUFFERS: gl.constexpr,
                   GATHER: gl.constexpr, LIMIT_FROM_POS: gl.constexpr, DIRECT: gl.constexpr,
                   BALANCED: gl.constexpr, ASCENDING: gl.constexpr, OTHER_REGS: gl.constexpr):
    # _latent_kernel's contract (BLOCK 64, BUFFERS 2) in two warp groups on the seesaw schedule (_seesaw_slice).
    tile: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_lat = gl.allocate_shared_memory(gl.bfloat16, [64, L], tile)
    q_rope = gl.allocate_shared_memory(gl.bfloat16, [64, R], tile)
    k_lat = gl.allocate_shared_memory(gl.bfloat16, [2, 64, L], tile)
    k_rope = gl.allocate_shared_memory(gl.bfloat16, [2, 64, R], tile)
    vec: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    msg0 = gl.allocate_shared_memory(gl.float32, [3, 64], vec)  # warp group 0's m, scale and row sum
    msg1 = gl.allocate_shared_memory(gl.float32, [3, 64], vec)
    # x_ready[2], y_ready[2] (a buffer's two column groups landed), msg0_ready, msg1_ready, p0_ready, q_ready,
    # q_free
    bars = gl.allocate_shared_memory(gl.int64, [9, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(8):
        mbarrier.init(bars.index(i), count=1)
    mbarrier.init(bars.index(8), count=2)  # q_free: both warp groups
    gl.warp_specialize([
        (_seesaw_part, (q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope,
                    msg0, msg1, bars, seq_rows, queries, limit_first, k_first, n_keys, keys_per_split, splits,
                    blocks_per_program, rows, H, L, R, GATHER, LIMIT_FROM_POS, DIRECT, BALANCED, ASCENDING, 0)),
        (_seesaw_part, (q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope,
                    msg0, msg1, bars, seq_rows, queries, limit_first, k_first, n_keys, keys_per_split, splits,
                    blocks_per_program, rows, H, L, R, GATHER, LIMIT_FROM_POS, DIRECT, BALANCED, ASCENDING, 1))],
        [4], [OTHER_REGS])


# gluon_latent._launch with this kernel: the second warp group's registers, one warp group as the default partition.
SEESAW_LAUNCH = dict(kernel=_seesaw_kernel, OTHER_REGS=240, num_warps=4)


def decode(q_cat, kv, input_pos, kv_lora_rank, per_sm, min_keys):
    """gluon_latent.decode's result with the seesaw kernel."""
    B, H, _ = q_cat.shape
    n_keys = kv.size(1)
    split = gk.balanced_split(B, H // 64, n_keys, 64, q_cat.device, per_sm, min_keys)
    acc, m, l = gk._launch(q_cat, kv, None, input_pos, n_keys, 1, 0, 0, n_keys, split[2], 0, kv_lora_rank, (64, 2),
                           balanced=split, **SEESAW_LAUNCH)
    return td._merge(acc, m, l, q_cat.dtype, (split[1], triton.cdiv(n_keys, 64)))


def sparse_prefill(q_cat, latent, top, q_start, kv_lora_rank, out):
    """gluon_latent.sparse_prefill's result (k_first 0, picks in ascending order) with the seesaw kernel."""
    B, C, H, W = q_cat.shape
    T, K = latent.size(1), top.size(-1)
    gk._launch(q_cat.reshape(B * C, H, W), latent, top.reshape(B * C, K), None, T, C, q_start, 0, K, 1,
               triton.cdiv(K, 64) * 64, kv_lora_rank, (64, 2), out=out.view(B * C, H, -1), ascending=True,
               **SEESAW_LAUNCH)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    torch.manual_seed(0)
    H, L, R = 128, 512, 64
    record = csv_recorder(os.path.join(args.out, "latent_seesaw.csv"))

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=300)

    gk.ENABLED = False  # the Triton kernels are the reference outputs
    B, S = 16, 131072
    q = (torch.randn(B, H, L + R, device="cuda") * 0.05).to(torch.bfloat16)
    kv = torch.randn(B, S, L + R, device="cuda").to(torch.bfloat16)
    pos = torch.tensor(S - 1, device="cuda")
    ref = td.mla_decode(q, kv, pos, L)
    flops = B * S * H * 2 * (L + R + L)
    for per_sm in (1, 2):
        out = decode(q, kv, pos, L, per_sm, 4096)
        err = (out.float() - ref.float()).abs().max().item()
        ms = bench(lambda: decode(q, kv, pos, L, per_sm, 4096))
        record(shape="mla-decode-b16-128k", variant="seesaw", config=f"per_sm={per_sm}", ms=ms,
               tflops=flops / ms / 1e9, max_err=err)
        ms = bench(lambda: gk.decode(q, kv, pos, L, None, gk.CONFIGS[0] + (per_sm, 4096)))
        record(shape="mla-decode-b16-128k", variant="gluon", config=f"per_sm={per_sm}", ms=ms,
               tflops=flops / ms / 1e9, max_err=0.0)
    del kv, ref
    C, T, K = 1024, 32768, 2048
    latent = torch.randn(1, T, L + R, device="cuda").to(torch.bfloat16)
    qc = (torch.randn(1, C, H, L + R, device="cuda") * 0.05).to(torch.bfloat16)
    q_start = T - C
    top = torch.stack([torch.randperm(q_start + c + 1, device="cuda")[:K].sort().values for c in range(C)])
    top = top.to(torch.int32)[None]
    ref = tdsa.sparse_latent_attention(qc, latent, top, q_start, 0, L, None)
    out = torch.empty(1, C, H, L, device="cuda", dtype=torch.bfloat16)
    flops = C * K * H * 2 * (L + R + L)
    sparse_prefill(qc, latent, top, q_start, L, out)
    err = (out.float() - ref.float()).abs().max().item()
    ms = bench(lambda: sparse_prefill(qc, latent, top, q_start, L, out))
    record(shape="dsa-sparse-1024q-32k", variant="seesaw", config="", ms=ms, tflops=flops / ms / 1e9, max_err=err)
    ms = bench(lambda: gk.sparse_prefill(qc, latent, top, q_start, 0, L, out, ascending=True))
    record(shape="dsa-sparse-1024q-32k", variant="gluon", config="", ms=ms, tflops=flops / ms / 1e9, max_err=0.0)


if __name__ == "__main__":
    main()
