"""Optional Triton kernels for decode (used on CUDA tensors when Triton is installed): MHA/GQA/MQA attention,
MLA's absorbed attention, TPA's factorized attention, and DSA's lightning indexer over its FP8 keys.

Dense (MHA/GQA/MQA), MLA and TPA are split-KV (flash-decoding) kernels: each program takes one sequence,
one block of heads and one slice of the cache, streams that slice once, keeps every head's running max, sum
and output in registers (online softmax) and writes them; `_merge_kernel` then combines the slices (log-sum-exp merge).
Keys past input_pos are masked (and whole blocks past it skipped) on the device, so a step captures in a
CUDA graph.
Dense: a program takes the query heads of one KV head; in PyTorch the step writes a score per (head, slot),
masks it, and reads and writes it again for the softmax, which at MQA's one KV head moves about as many
bytes as the cache itself.
MLA: a program takes up to 64 heads of one sequence, so each cached [latent | rope key] row is read from
memory once per head block; scores are one [heads, L + R] x [L + R, keys] tensor-core product, and the same
latent tile (already on chip) is the value: P x latent accumulates [heads, L]. In PyTorch the scores and
probabilities of all 128 heads go through memory between three kernels. At 128 heads the step is about as
much tensor-core work (2 h (2L + R) FLOPs per cached row) as memory traffic ((L + R) x 2 bytes per row) on
an H100, so the tiles are chosen by timing (MLA_CONFIGS). DSA runs the same kernel over its top-k slots,
reading the chosen rows in place (no gathered copy). On Hopper, with heads a multiple of 64, the Gluon kernel
of kvplan.models.gluon_latent (each warp group its own keys' scores, cp.async key blocks, asynchronous
tensor-core products) is timed beside these configs and runs when faster: 1.5x at DeepSeek's 128 heads.
TPA: plain PyTorch contracts the query with the cached factors through intermediates of h x R values per
cached token, each written to and read back from memory: more bytes than the factor cache itself. The kernel
runs either contraction order (kvplan.kinds.TPA.decode_order): the rebuilt query dotted with B_K, or FlashTPA's
B_Q . B_K products mixed into the heads by A_Q, both as tensor-core products over a block of keys.
DSA: the PyTorch path rotates, quantizes and writes the indexer's key and queries through 38 small operations
(besides its projections and LayerNorm), dequantizes every FP8 indexer key to the compute dtype and writes each
indexer head's scores (index_n_heads values per cached token) before weighting them. Here one kernel
(dsa_decode_inputs) rotates and quantizes the key and the queries and writes the key into the cache; the
indexer (dsa_index_scores) reads each FP8 key and its scales once (a program holds one FP8 query and runs over
a slice of the keys; the products run on FP8 tensor cores where the GPU has them) and writes one fp32 score
per token, -inf past the position. topk_indices then picks the k slots (by default whichever of torch.topk
and triton_dsa.radix_topk is faster at the shape).
All are checked against the layers' PyTorch paths in tests/test_triton_decode.py (GPU, or Triton's
interpreter).
"""

from __future__ import annotations

import torch

from . import gluon_latent

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU CI has no Triton; the layers then use their PyTorch paths
    triton = None

HAVE_TRITON = triton is not None
PROGRAMS_PER_SM = 8  # split-KV grids aim at this many programs per SM, so the last wave's tail is short
MIN_KEYS_PER_SPLIT = 256  # ... but no slice shorter than this (the merge then stays small)
MERGE_SPLITS = 8  # slices combined per step of the merge kernel
# An MLA program holds a whole SM (its tiles take most of shared memory), so its grid aims at a few whole waves.
# Shorter slices mean more programs but more partial outputs: a slice's (H x L fp32, written, then read by the
# merge) is 256 KiB for 128 heads of 512, 11% of what a slice of 2048 rows of 576 bf16 reads. The shortest
# slice is timed with the tiles: MLA_SLICES for the whole cache, MLA_GATHERED_SLICES for DSA's top-k.
MLA_PROGRAMS_PER_SM = 4
MLA_SLICES = (256, 1024, 2048, 4096)
MLA_GATHERED_SLICES = (256, 512, 1024)

# Launch settings tried on the first call of each shape (timed on the GPU, outside graph capture); the first
# entry serves where no timing is possible (the interpreter, or a shape first seen during capture).
# MLA: (heads per program, keys per inner step, warps, pipeline stages), each with every shortest slice above;
# TPA and dense (MHA/GQA/MQA): (keys per step, warps, stages, shortest slice).
MLA_CONFIGS = [(64, 32, 8, 2), (64, 64, 8, 2), (64, 32, 8, 3), (64, 16, 8, 4), (32, 32, 4, 2), (32, 64, 4, 2),
               (16, 32, 4, 2)]
# DSA indexer: (keys per step, warps, stages, 1 for keys as the product's rows, 1 for FP8 tensor cores (where the
# GPU has them; else bf16 ones), programs per SM).
INDEX_CONFIGS = [(128, 4, 3, 1, 1, 8), (128, 8, 3, 1, 1, 8), (256, 8, 3, 1, 1, 8), (128, 4, 4, 1, 1, 8),
                 (64, 4, 4, 1, 1, 8), (256, 8, 2, 1, 1, 4), (128, 4, 3, 1, 1, 16), (128, 4, 3, 0, 1, 8),
                 (128, 8, 3, 1, 0, 8), (128, 4, 3, 1, 0, 8), (64, 4, 2, 0, 0, 8)]
DENSE_TILES = [(64, 4, 2), (128, 4, 2), (64, 4, 3), (128, 8, 3)]
TPA_TILES = [(32, 4, 3), (64, 4, 3), (32, 4, 2), (64, 8, 2), (32, 4, 4), (16, 4, 4)]
# Shortest slice of the cache a dense or TPA program streams (each tile above is timed with each): short
# slices fill the GPU when batch x heads is small, long ones keep the merge short (it reads every slice's
# partial output) and each program's stream long against its start-up.
SPLIT_KEYS = (MIN_KEYS_PER_SPLIT, 1024, 4096)
DENSE_CONFIGS = [tiles + (keys,) for keys in SPLIT_KEYS for tiles in DENSE_TILES]
TPA_CONFIGS = [tiles + (keys,) for keys in SPLIT_KEYS for tiles in TPA_TILES]

TOPK_GROUPS = (4, 8, 16, 32)  # group sizes topk_indices tries besides a plain torch.topk (group size 1)

TIMED_CALLS = 5  # calls per config timed by _fastest
HOLD_CYCLES = 2_000_000  # GPU clock cycles (about 1 ms) _fastest holds the GPU while it queues those calls

ENABLED = True  # False: every layer takes its PyTorch path (for comparisons)
CHOSEN: dict[tuple, tuple] = {}  # shape key -> fastest config measured
TIMINGS: dict[tuple, list[tuple[float, tuple]]] = {}  # shape key -> (ms per call, config) of every config timed


def enabled(x: torch.Tensor) -> bool:
    """Whether the kernel serves this call: enabled, Triton present, the tensors on a GPU, and no dispatch mode
    (FlopCounterMode, tracing) active, which would not see inside a Triton kernel."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return ENABLED and HAVE_TRITON and x.is_cuda and _get_current_dispatch_mode() is None


if HAVE_TRITON:
    @triton.jit
    def _latent_query(q_ptr, first_row, hb, H: tl.constexpr, L: tl.constexpr, R: tl.constexpr, L_PAD: tl.constexpr,
                      R_PAD: tl.constexpr, BLOCK_H: tl.constexpr):
        """Head block hb of one token's absorbed query, rows first_row + head of q_ptr (L + R wide each):
        (heads [BLOCK_H], latent part [BLOCK_H, L_PAD], rope part [BLOCK_H, R_PAD]), zero past H, L and R."""
        heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        lat = tl.arange(0, L_PAD)
        rope = tl.arange(0, R_PAD)
        q_row = q_ptr + (first_row + heads[:, None]) * (L + R)
        q_lat = tl.load(q_row + lat[None, :], mask=(heads < H)[:, None] & (lat < L)[None, :], other=0.0)
        q_rope = tl.load(q_row + L + rope[None, :], mask=(heads < H)[:, None] & (rope < R)[None, :], other=0.0)
        return heads, q_lat, q_rope


    @triton.jit
    def _latent_update(q_lat, q_rope, k_lat, k_rope, live, m, l, acc):
        """One block of cached rows of absorbed MLA attention, as tiles k_lat [BLOCK, L_PAD] and k_rope [BLOCK,
        R_PAD] (`live` [BLOCK]: the rows that attend): scores on the tensor cores, then the online-softmax update
        of (m, l, acc), m in log2 units (scores times log2 e, for exp2). The latent tile already on chip is the
        value: P x latent accumulates [heads, L], into the rescaled output (no second fp32 tile in registers)."""
        scores = tl.dot(q_lat, tl.trans(k_lat))
        scores = tl.dot(q_rope, tl.trans(k_rope), scores) * 1.4426950408889634  # [BLOCK_H, BLOCK], log2 units
        scores = tl.where(live[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.math.exp2(scores - m_new[:, None])
        correction = tl.math.exp2(m - m_new)
        l = l * correction + tl.sum(p, axis=1)
        acc = tl.dot(p.to(k_lat.dtype), k_lat, acc * correction[:, None])
        return m_new, l, acc


    @triton.jit
    def _latent_block(q_lat, q_rope, row, live, m, l, acc, L: tl.constexpr, R: tl.constexpr, L_PAD: tl.constexpr,
                      R_PAD: tl.constexpr):
        """_latent_update over the rows at pointers `row` [1, BLOCK] ([latent | rope key] each), loaded as
        [L_PAD, BLOCK] tiles (each row's elements down a column)."""
        lat = tl.arange(0, L_PAD)
        rope = tl.arange(0, R_PAD)
        k_lat = tl.load(row + lat[:, None], mask=live[None, :] & (lat < L)[:, None], other=0.0)  # [L_PAD, BLOCK]
        k_rope = tl.load(row + L + rope[:, None], mask=live[None, :] & (rope < R)[:, None], other=0.0)
        return _latent_update(q_lat, q_rope, tl.trans(k_lat), tl.trans(k_rope), live, m, l, acc)


    @triton.jit
    def _mla_decode_kernel(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, slots, n_keys, keys_per_split,
                           splits, H: tl.constexpr, L: tl.constexpr, R: tl.constexpr, L_PAD: tl.constexpr,
                           R_PAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK: tl.constexpr, GATHER: tl.constexpr):
        # One program: BLOCK_H heads of one sequence over one slice of its keys. Each cached row is loaded once
        # as a [BLOCK, L_PAD] tile: scores = Q_lat K_lat^T + Q_rope K_rope^T and acc += P K_lat are tensor-core
        # products with the heads as M. Head blocks vary fastest in the grid, so the programs sharing a slice
        # run together and the second one reads it from L2.
        # GATHER: key j of the sequence is slot idx[b, j] (DSA's top-k, n_keys per sequence, any order); the
        # rows are read in place. Else key j is slot j. Either way a key attends only if its slot <= limit.
        hb = tl.program_id(0)
        b = tl.program_id(1)
        split = tl.program_id(2)
        kv_ptr += b.to(tl.int64) * slots * (L + R)  # this sequence's rows (int64: B x slots x (L+R) can pass 2^31)
        heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        lat = tl.arange(0, L_PAD)
        rope = tl.arange(0, R_PAD)
        head_ok = heads < H
        lat_ok = lat < L
        rope_ok = rope < R
        q_row = q_ptr + (b * H + heads[:, None]) * (L + R)  # scaled by the softmax scale
        q_lat = tl.load(q_row + lat[None, :], mask=head_ok[:, None] & lat_ok[None, :], other=0.0)
        q_rope = tl.load(q_row + L + rope[None, :], mask=head_ok[:, None] & rope_ok[None, :], other=0.0)
        m = tl.full([BLOCK_H], -1e30, tl.float32)
        l = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, L_PAD], tl.float32)
        limit = tl.load(pos_ptr).to(tl.int32)
        first = split * keys_per_split
        if GATHER:
            end = tl.minimum(first + keys_per_split, n_keys)
        else:
            end = tl.minimum(tl.minimum(first + keys_per_split, limit + 1), slots)  # later keys: not read at all
        for start in range(first, end, BLOCK):
            j = start + tl.arange(0, BLOCK)
            if GATHER:
                s = tl.load(idx_ptr + b * n_keys + j, mask=j < end, other=0).to(tl.int32)
                live = (j < end) & (s <= limit)
            else:
                s = j
                live = j < end
            row = kv_ptr + s[:, None] * (L + R)
            if L == L_PAD:  # no mask along the row: the loads vectorize
                k_lat = tl.load(row + lat[None, :], mask=live[:, None], other=0.0)  # [BLOCK, L_PAD]
            else:
                k_lat = tl.load(row + lat[None, :], mask=live[:, None] & lat_ok[None, :], other=0.0)
            if R == R_PAD:
                k_rope = tl.load(row + L + rope[None, :], mask=live[:, None], other=0.0)
            else:
                k_rope = tl.load(row + L + rope[None, :], mask=live[:, None] & rope_ok[None, :], other=0.0)
            m, l, acc = _latent_update(q_lat, q_rope, k_lat, k_rope, live, m, l, acc)
        out = (b * splits + split) * H + heads
        tl.store(acc_ptr + out[:, None] * L + lat[None, :], acc, mask=head_ok[:, None] & lat_ok[None, :])
        tl.store(m_ptr + out, m * 0.6931471805599453, mask=head_ok)  # natural-log units, as the merge takes them
        tl.store(l_ptr + out, l, mask=head_ok)


    @triton.jit
    def _tpa_decode_kernel(q_ptr, bq_ptr, ak_ptr, bk_ptr, av_ptr, bv_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr,
                           slots, keys_per_split, splits,
                           H: tl.constexpr, D: tl.constexpr, RK: tl.constexpr, RV: tl.constexpr, RQ: tl.constexpr,
                           H_PAD: tl.constexpr, D_PAD: tl.constexpr, RQ_PAD: tl.constexpr, BLOCK: tl.constexpr,
                           EVEN: tl.constexpr):
        # EVEN (slots a multiple of BLOCK): every block lies inside the cache, so loads need no mask over keys;
        # keys past input_pos are then read but masked out of the scores. A key mask on the loads would stop
        # Triton from vectorizing the A factors' loads, which run along the keys.
        # A factors are token-last [B, R, h, slots]: each (rank, head) row of a block is one contiguous run.
        # B factors are [B, slots, R, d]: each token's rank-r row is d contiguous elements.
        # RQ == 0: q_ptr is the rebuilt query [B, H, D]. RQ > 0 (FlashTPA order): q_ptr is A_Q [B, H, RQ] and
        # bq_ptr B_Q [B, RQ, D]; q . B_K = A_Q (B_Q . B_K), with B_Q . B_K computed once for all heads.
        b = tl.program_id(0)
        split = tl.program_id(1)
        heads = tl.arange(0, H_PAD)
        dims = tl.arange(0, D_PAD)
        head_ok = heads < H
        dim_ok = dims < D
        pos = tl.load(pos_ptr).to(tl.int32)
        base = b.to(tl.int64) * slots  # this sequence's first slot (int64: B x slots x R x h|d can pass 2^31)
        ak_ptr += base * RK * H
        bk_ptr += base * RK * D
        av_ptr += base * RV * H
        bv_ptr += base * RV * D
        if RQ == 0:
            q = tl.load(q_ptr + b * H * D + heads[:, None] * D + dims[None, :],
                        mask=head_ok[:, None] & dim_ok[None, :], other=0.0)  # [H_PAD, D_PAD], scaled by scale / R_K
        else:
            ranks = tl.arange(0, RQ_PAD)
            rank_ok = ranks < RQ
            a_q = tl.load(q_ptr + b * H * RQ + heads[:, None] * RQ + ranks[None, :],
                          mask=head_ok[:, None] & rank_ok[None, :], other=0.0)  # [H_PAD, RQ_PAD], scale / (R_Q R_K)
            b_q = tl.load(bq_ptr + b * RQ * D + ranks[:, None] * D + dims[None, :],
                          mask=rank_ok[:, None] & dim_ok[None, :], other=0.0)  # [RQ_PAD, D_PAD]
        m = tl.full([H_PAD], -1e30, tl.float32)
        l = tl.zeros([H_PAD], tl.float32)
        acc = tl.zeros([H_PAD, D_PAD], tl.float32)
        first = split * keys_per_split
        end = tl.minimum(tl.minimum(first + keys_per_split, pos + 1), slots)
        for start in range(first, end, BLOCK):
            s = start + tl.arange(0, BLOCK)
            live = s < end
            if EVEN:
                load_ok = tl.full([BLOCK], 1, tl.int1)
            else:
                load_ok = live
            scores = tl.zeros([H_PAD, BLOCK], tl.float32)
            for r in tl.static_range(RK):
                b_k = tl.load(bk_ptr + (s[None, :] * RK + r) * D + dims[:, None],
                              mask=load_ok[None, :] & dim_ok[:, None], other=0.0)  # [D_PAD, BLOCK]
                a_k = tl.load(ak_ptr + (r * H + heads[:, None]) * slots + s[None, :],
                              mask=load_ok[None, :] & head_ok[:, None], other=0.0)  # [H_PAD, BLOCK]
                if RQ == 0:
                    qb = tl.dot(q, b_k)
                else:
                    qb = tl.dot(a_q, tl.dot(b_q, b_k).to(b_k.dtype))  # [H_PAD, RQ_PAD] x [RQ_PAD, BLOCK]
                scores += a_k.to(tl.float32) * qb
            scores = tl.where(live[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            correction = tl.exp(m - m_new)
            l = l * correction + tl.sum(p, axis=1)
            acc = acc * correction[:, None]
            m = m_new
            for r in tl.static_range(RV):
                a_v = tl.load(av_ptr + (r * H + heads[:, None]) * slots + s[None, :],
                              mask=load_ok[None, :] & head_ok[:, None], other=0.0)
                b_v = tl.load(bv_ptr + (s[:, None] * RV + r) * D + dims[None, :],
                              mask=load_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK, D_PAD]
                acc += tl.dot((p * a_v.to(tl.float32)).to(b_v.dtype), b_v)
        out = (b * splits + split) * H + heads
        tl.store(acc_ptr + out[:, None] * D + dims[None, :], acc, mask=head_ok[:, None] & dim_ok[None, :])
        tl.store(m_ptr + out, m, mask=head_ok)
        tl.store(l_ptr + out, l, mask=head_ok)


    @triton.jit
    def _dense_decode_kernel(q_ptr, k_ptr, v_ptr, limit_ptr, acc_ptr, m_ptr, l_ptr, slots, keys_per_split, splits,
                             score_scale, KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, G_PAD: tl.constexpr,
                             D_PAD: tl.constexpr, BLOCK: tl.constexpr):
        # One program: the G query heads of one KV head of one sequence over one slice of its cache. Each cached
        # key and value row is read once for the whole group; the group's heads are the rows (M) of both
        # tensor-core products (padded to 16 rows: MHA's single head wastes tensor-core work, not bandwidth).
        kvh = tl.program_id(0)
        b = tl.program_id(1)
        split = tl.program_id(2)
        rows = tl.arange(0, G_PAD)
        dims = tl.arange(0, D_PAD)
        row_ok = rows < G
        dim_ok = dims < D
        heads = kvh * G + rows
        q = tl.load(q_ptr + (b * KV * G + heads[:, None]) * D + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :],
                    other=0.0)
        if D == D_PAD:  # no mask along the rows: the cache loads vectorize
            row_mask = tl.full([D_PAD], 1, tl.int1)
        else:
            row_mask = dim_ok
        base = (b * KV + kvh).to(tl.int64) * slots * D  # int64: B x kv x slots x d can pass 2^31
        k_ptr += base
        v_ptr += base
        m = tl.full([G_PAD], -1e30, tl.float32)
        l = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], tl.float32)
        limit = tl.load(limit_ptr).to(tl.int32)
        first = split * keys_per_split
        end = tl.minimum(tl.minimum(first + keys_per_split, limit + 1), slots)  # later slots: not read at all
        for start in range(first, end, BLOCK):
            s = start + tl.arange(0, BLOCK)
            live = s < end
            k = tl.load(k_ptr + s[:, None] * D + dims[None, :], mask=live[:, None] & row_mask[None, :], other=0.0)
            scores = tl.dot(q, tl.trans(k)) * score_scale  # [G_PAD, BLOCK], log2 units
            scores = tl.where(live[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            p = tl.math.exp2(scores - m_new[:, None])
            correction = tl.math.exp2(m - m_new)
            l = l * correction + tl.sum(p, axis=1)
            v = tl.load(v_ptr + s[:, None] * D + dims[None, :], mask=live[:, None] & row_mask[None, :], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None])
            m = m_new
        out = (b * splits + split) * KV * G + heads
        tl.store(acc_ptr + out[:, None] * D + dims[None, :], acc, mask=row_ok[:, None] & dim_ok[None, :])
        tl.store(m_ptr + out, m * 0.6931471805599453, mask=row_ok)  # natural-log units, as the merge takes them
        tl.store(l_ptr + out, l, mask=row_ok)


    @triton.jit
    def _merge_kernel(acc_ptr, m_ptr, l_ptr, out_ptr, splits, blocks_per_program, n_blocks, H: tl.constexpr,
                      D: tl.constexpr, D_PAD: tl.constexpr, STEP: tl.constexpr):
        """out[b, h] = sum_i exp(m_i - M) acc_i / sum_i exp(m_i - M) l_i over the slices i (M: running max).
        blocks_per_program > 0: the slices of gluon_latent's BALANCED grids, as many for row b as programs held
        some of its n_blocks key blocks; else `splits` each."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        count = splits
        if blocks_per_program > 0:
            count = ((b + 1) * n_blocks - 1) // blocks_per_program - b * n_blocks // blocks_per_program + 1
        dims = tl.arange(0, D_PAD)
        dim_ok = dims < D
        big = tl.full([1], -1e30, tl.float32)
        total = tl.zeros([D_PAD], tl.float32)
        norm = tl.zeros([1], tl.float32)
        for first in range(0, count, STEP):
            i = first + tl.arange(0, STEP)
            ok = i < count
            row = (b * splits + i) * H + h
            m = tl.load(m_ptr + row, mask=ok, other=-1e30)
            l = tl.load(l_ptr + row, mask=ok, other=0.0)
            acc = tl.load(acc_ptr + row[:, None] * D + dims[None, :], mask=ok[:, None] & dim_ok[None, :], other=0.0)
            big_new = tl.maximum(big, tl.max(m, axis=0))
            keep = tl.exp(big - big_new)
            weight = tl.exp(m - big_new)  # [STEP]
            total = total * keep + tl.sum(acc * weight[:, None], axis=0)
            norm = norm * keep + tl.sum(l * weight, axis=0)
            big = big_new
        tl.store(out_ptr + (b * H + h) * D + dims, (total / norm).to(out_ptr.dtype.element_ty), mask=dim_ok)


    @triton.jit
    def _dot_operand(x, DOT: tl.constexpr):
        """FP8 values as a product takes them: DOT 2, FP8 tensor cores; 1, bf16 ones; 0, fp32 (the interpreter).
        FP8 values are exact in bf16 and fp32, so every choice forms the same products."""
        if DOT == 1:  # one return statement: on a GPU, Triton requires every return of a function to agree in type
            y = x.to(tl.bfloat16)
        elif DOT == 0:
            y = x.to(tl.float32)
        else:
            y = x
        return y


    @triton.jit
    def _index_dot(k, q, KEYS_AS_ROWS: tl.constexpr, DOT: tl.constexpr):
        """FP8 keys [BLOCK, d] against queries [N_PAD, d] (already _dot_operand) -> fp32 [BLOCK, N_PAD]
        (KEYS_AS_ROWS) or [N_PAD, BLOCK]."""
        k = _dot_operand(k, DOT)
        if KEYS_AS_ROWS:  # keys [BLOCK, d] and queries as [d, N_PAD], both K-major, as FP8 tensor cores take them
            scores = tl.dot(k, tl.trans(q))
        else:
            scores = tl.dot(q, tl.trans(k))
        return scores


    @triton.jit
    def _dsa_index_kernel(q_ptr, qs_ptr, w_ptr, k_ptr, ks_ptr, pos_ptr, out_ptr, slots, keys_per_program,
                          N: tl.constexpr, D: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr,
                          GROUP_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK: tl.constexpr, MASK: tl.constexpr,
                          KEYS_AS_ROWS: tl.constexpr, DOT: tl.constexpr, EVEN: tl.constexpr):
        # One program: one sequence's FP8 query (all indexer heads) against a run of keys_per_program slots, BLOCK
        # keys per tensor-core product. With one scale group the query's scales fold into the head weights and the
        # key's scale multiplies the weighted sum (scales are positive, so they pass through the ReLU): the
        # [BLOCK, heads] products see one max and one multiply-add each.
        # EVEN (one group of GROUP_PAD elements): no mask along a key's row, so its loads vectorize.
        b = tl.program_id(0)
        first = tl.program_id(1) * keys_per_program
        end = tl.minimum(first + keys_per_program, slots)
        heads = tl.arange(0, N_PAD)
        head_ok = heads < N
        k_ptr += b.to(tl.int64) * slots * D
        ks_ptr += b.to(tl.int64) * slots * GROUPS
        out_ptr += b.to(tl.int64) * slots
        rows = b * N + heads  # rows of q, its scales and the weights
        dims0 = tl.arange(0, GROUP_PAD)
        dim0_ok = (dims0 < D) & (dims0 < GROUP)
        w = tl.load(w_ptr + rows, mask=head_ok, other=0.0)
        if GROUPS == 1:
            w = w * tl.load(qs_ptr + rows, mask=head_ok, other=0.0)
            q0 = _dot_operand(tl.load(q_ptr + rows[:, None] * D + dims0[None, :], mask=head_ok[:, None] & dim0_ok[None, :],
                                      other=0.0), DOT)
        if MASK:
            limit = tl.load(pos_ptr).to(tl.int32)
        else:
            limit = slots
        for start in range(first, end, BLOCK):
            s = start + tl.arange(0, BLOCK)
            key_ok = s < end
            live = key_ok & (s <= limit)  # keys past the limit are not read
            if GROUPS == 1:
                if EVEN:
                    k = tl.load(k_ptr + s[:, None] * D + dims0[None, :], mask=live[:, None], other=0.0)
                else:
                    k = tl.load(k_ptr + s[:, None] * D + dims0[None, :], mask=live[:, None] & dim0_ok[None, :],
                                other=0.0)
                acc = _index_dot(k, q0, KEYS_AS_ROWS, DOT)
                if KEYS_AS_ROWS:
                    score = tl.sum(tl.maximum(acc, 0.0) * w[None, :], axis=1)
                else:
                    score = tl.sum(tl.maximum(acc, 0.0) * w[:, None], axis=0)
                score = score * tl.load(ks_ptr + s, mask=live, other=0.0)
            else:
                if KEYS_AS_ROWS:
                    acc = tl.zeros([BLOCK, N_PAD], tl.float32)
                else:
                    acc = tl.zeros([N_PAD, BLOCK], tl.float32)
                for g in tl.static_range(GROUPS):
                    dims = g * GROUP + dims0
                    dim_ok = (dims < D) & (dims0 < GROUP)
                    q = _dot_operand(tl.load(q_ptr + rows[:, None] * D + dims[None, :],
                                             mask=head_ok[:, None] & dim_ok[None, :], other=0.0), DOT)
                    qs = tl.load(qs_ptr + rows * GROUPS + g, mask=head_ok, other=0.0)
                    k = tl.load(k_ptr + s[:, None] * D + dims[None, :], mask=live[:, None] & dim_ok[None, :], other=0.0)
                    ks = tl.load(ks_ptr + s * GROUPS + g, mask=live, other=0.0)
                    if KEYS_AS_ROWS:
                        acc += _index_dot(k, q, KEYS_AS_ROWS, DOT) * ks[:, None] * qs[None, :]
                    else:
                        acc += _index_dot(k, q, KEYS_AS_ROWS, DOT) * qs[:, None] * ks[None, :]
                if KEYS_AS_ROWS:
                    score = tl.sum(tl.maximum(acc, 0.0) * w[None, :], axis=1)
                else:
                    score = tl.sum(tl.maximum(acc, 0.0) * w[:, None], axis=0)
            if MASK:  # slots past the limit: -inf, so no top-k takes them while a live slot is left
                score = tl.where(s <= limit, score, float("-inf"))
            tl.store(out_ptr + s, score, mask=key_ok)


    @triton.jit
    def _rounded(x, like):
        """fp32 x rounded to the dtype of `like` (ties to even), kept in fp32. bf16 through its bits: Triton's
        interpreter rounds in its conversions without carrying into the exponent (127 to FP8 gave 64)."""
        if like.dtype == tl.bfloat16:
            bits = x.to(tl.int32, bitcast=True)
            return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).to(tl.float32, bitcast=True)
        return x.to(like.dtype).to(tl.float32)


    @triton.jit
    def _rotated(row, row_ok, dims, dim_ok, cos_ptr, sin_ptr, R: tl.constexpr):
        """Elements `dims` of rows `row` [M, 1] (pointers) with RoPE on their first R (half-split pairs (j, j + R/2),
        angles from cos/sin [R/2]) -> fp32 [M, len(dims)], rounded as apply_rope rounds in the rows' dtype: each
        product, then each sum."""
        HALF: tl.constexpr = R // 2
        ok = row_ok[:, None] & dim_ok[None, :]
        x = tl.load(row + dims[None, :], mask=ok, other=0.0)
        first_half = dims < HALF
        turned = dims < R
        partner = tl.where(first_half, dims + HALF, dims - HALF)
        other = tl.load(row + partner[None, :], mask=ok & turned[None, :], other=0.0).to(tl.float32)
        angle = tl.where(turned, dims % HALF, 0)
        cos = _rounded(tl.load(cos_ptr + angle, mask=turned, other=1.0), x)
        sin = _rounded(tl.load(sin_ptr + angle, mask=turned, other=0.0), x)
        sin = tl.where(first_half, -sin, sin)  # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        out = _rounded(x.to(tl.float32) * cos[None, :], x)
        out = _rounded(out + other * sin[None, :], x)
        return tl.where(turned[None, :], out, x.to(tl.float32))


    @triton.jit
    def _e4m3_value(x):
        """fp32 -> the nearest float8 e4m3 value (ties to even), still in fp32, so that converting it is exact
        (as _rounded, for the interpreter)."""
        bits = x.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)  # 3 mantissa bits
        small = (tl.abs(x) + 24576.0) - 24576.0  # below 2^-6, multiples of 2^-9 (1.5 x 2^14 has ulp 2^-9)
        return tl.where(tl.abs(x) < 0.015625, tl.where(x < 0, -small, small), normal)


    @triton.jit
    def _fp8_rows(x, dim_ok):
        """fp32 [M, d] -> (FP8 e4m3 values, fp32 scales [M]): one scale amax / 448 per row, as DSALayer._quantize."""
        amax = tl.max(tl.where(dim_ok[None, :], tl.abs(x), 0.0), axis=1)
        scale = tl.maximum(amax, 1e-12) * (1.0 / 448.0)  # a product, as _quantize's
        return _e4m3_value(tl.math.div_rn(x, scale[:, None])).to(tl.float8e4nv), scale


    @triton.jit
    def _dsa_inputs_kernel(q_ptr, w_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr, q8_ptr, qs_ptr, w_out_ptr, kc_ptr, kcs_ptr,
                           slots, weight_scale, N: tl.constexpr, D: tl.constexpr, R: tl.constexpr,
                           GROUPS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, N_PAD: tl.constexpr):
        # One program per sequence: its indexer key rotated, quantized and written into the cache at slot
        # position % slots; its queries (every head) rotated and quantized; its head weights scaled.
        b = tl.program_id(0)
        heads = tl.arange(0, N_PAD)
        head_ok = heads < N
        w = tl.load(w_ptr + b * N + heads, mask=head_ok, other=0.0)
        w = _rounded(w.to(tl.float32) * weight_scale, w)  # as DSALayer's in-place mul_
        tl.store(w_out_ptr + b * N + heads, w, mask=head_ok)
        slot = (tl.load(pos_ptr) % slots).to(tl.int64)
        one = tl.zeros([1], tl.int32)  # the key: a tile of one row
        for g in tl.static_range(GROUPS):
            dims = g * GROUP + tl.arange(0, GROUP_PAD)
            dim_ok = (dims < D) & (tl.arange(0, GROUP_PAD) < GROUP)
            q8, qs = _fp8_rows(_rotated(q_ptr + (b * N + heads[:, None]) * D, head_ok, dims, dim_ok, cos_ptr, sin_ptr,
                                        R), dim_ok)
            tl.store(q8_ptr + (b * N + heads[:, None]) * D + dims[None, :], q8, mask=head_ok[:, None] & dim_ok[None, :])
            tl.store(qs_ptr + (b * N + heads) * GROUPS + g, qs, mask=head_ok)
            k8, ks = _fp8_rows(_rotated(k_ptr + b * D + one[:, None], one >= 0, dims, dim_ok, cos_ptr, sin_ptr, R),
                               dim_ok)
            row = b.to(tl.int64) * slots + slot
            tl.store(kc_ptr + row * D + one[:, None] + dims[None, :], k8, mask=dim_ok[None, :])
            tl.store(kcs_ptr + row * GROUPS + g + one, ks)


if HAVE_TRITON:
    @triton.jit
    def _rms_row(x, w_ptr, cols, ok, eps, sqrt_width):
        """RMSNorm of one row x [D_PAD] (zero past the row; `ok`) with weights at w_ptr + cols -> fp32, each step
        rounded to x's dtype as kvplan.models.common.RMSNorm's PyTorch path rounds: the reciprocal of
        (sqrt(mean(x^2)) + eps), x times it, then times the weight."""
        xf = x.to(tl.float32)
        rms = tl.math.div_rn(tl.math.sqrt_rn(tl.sum(xf * xf, axis=0)), sqrt_width)  # IEEE-rounded, as PyTorch's
        y = _rounded(xf * _rounded(tl.math.div_rn(1.0, rms + eps), x), x)
        return _rounded(y * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32), x)


    @triton.jit
    def _mla_latent_kernel(kv_ptr, w_ptr, cos_ptr, sin_ptr, pos_ptr, cache_ptr, slots, eps, sqrt_width,
                           L: tl.constexpr, R: tl.constexpr, L_PAD: tl.constexpr, R_PAD: tl.constexpr):
        # One program per sequence: its latent normed, its RoPE key rotated, both written as its cache row at slot
        # position % slots.
        b = tl.program_id(0)
        row = kv_ptr + b * (L + R)
        lat = tl.arange(0, L_PAD)
        lat_ok = lat < L
        x = tl.load(row + lat, mask=lat_ok, other=0.0)
        out = cache_ptr + (b.to(tl.int64) * slots + (tl.load(pos_ptr) % slots).to(tl.int64)) * (L + R)
        tl.store(out + lat, _rms_row(x, w_ptr, lat, lat_ok, eps, sqrt_width).to(x.dtype), mask=lat_ok)
        one = tl.zeros([1], tl.int32)  # the key: a tile of one row
        dims = tl.arange(0, R_PAD)
        key = _rotated(row + L + one[:, None], one >= 0, dims, dims < R, cos_ptr, sin_ptr, R)
        tl.store(out + L + one[:, None] + dims[None, :], key.to(x.dtype), mask=(dims < R)[None, :])


    @triton.jit
    def _mla_query_rope_kernel(q_ptr, q_token, q_head, cos_ptr, sin_ptr, angle_rows, out_ptr, scale,
                               H: tl.constexpr, L: tl.constexpr, R: tl.constexpr, NOPE: tl.constexpr,
                               R_PAD: tl.constexpr, BLOCK_H: tl.constexpr):
        # Program (token, head block): RoPE(q_rope) x scale into columns L.. of out [N, H, L + R], rounded as the
        # PyTorch path rounds (the rotation's products and sums, then the scale). Token t's angles: row t %
        # angle_rows of cos/sin.
        t = tl.program_id(0)
        angle = (t % angle_rows) * (R // 2)
        cos_ptr += angle
        sin_ptr += angle
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        head_ok = heads < H
        dims = tl.arange(0, R_PAD)
        row = q_ptr + t * q_token + heads[:, None] * q_head + NOPE
        rope = _rotated(row, head_ok, dims, dims < R, cos_ptr, sin_ptr, R)
        like = tl.load(row, mask=head_ok[:, None], other=0.0)  # its dtype: the rounding's
        out = out_ptr + (t * H + heads[:, None]) * (L + R)
        tl.store(out + L + dims[None, :], _rounded(rope * scale, like).to(out_ptr.dtype.element_ty),
                 mask=head_ok[:, None] & (dims < R)[None, :])


def mla_latent_write(kv: torch.Tensor, norm_weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                     cache: torch.Tensor, input_pos: torch.Tensor) -> None:
    """MLALayer._latent and the cache write of one decode step in one kernel: kv [B, L + R] (wkv_a's output)
    -> cache [>= B, slots, L + R] at slot input_pos % slots gets [RMSNorm(kv[:, :L]), RoPE(kv[:, L:])] (cos, sin
    [1, R/2]: the position's angles). norm_weight [L] and the cache in kv's dtype."""
    B, W = kv.shape
    L = norm_weight.numel()
    kv = kv.contiguous()
    _mla_latent_kernel[(B,)](kv, norm_weight, cos.contiguous(), sin.contiguous(), input_pos, cache, cache.size(1),
                             eps, L ** 0.5, L=L, R=W - L, L_PAD=_pad(L), R_PAD=_pad(W - L), num_warps=4)


def mla_query_rope(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float, q_cat: torch.Tensor) -> None:
    """The RoPE part of MLALayer._absorbed_query in one kernel: q [N, h, nope + R] (the query, its RoPE part last,
    last dimension contiguous), cos/sin [A, R/2] (token t's angles in row t % A: one row for a decode step, a
    prompt's T rows for its B x T tokens) -> q_cat[..., L:] = RoPE(q_rope) x scale, q_cat [N, h, L + R]
    contiguous."""
    N, H, W = q_cat.shape
    R = 2 * cos.size(-1)
    block_h = min(16, _pad(H))
    cos, sin = cos.reshape(-1, R // 2).contiguous(), sin.reshape(-1, R // 2).contiguous()
    _mla_query_rope_kernel[(N, triton.cdiv(H, block_h))](
        q, q.stride(0), q.stride(1), cos, sin, cos.size(0), q_cat, scale, H=H, L=W - R, R=R, NOPE=q.size(-1) - R,
        R_PAD=_pad(R), BLOCK_H=block_h, num_warps=4)


def dsa_decode_inputs(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      k_cache: torch.Tensor, scale_cache: torch.Tensor, input_pos: torch.Tensor, group: int,
                      weight_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The indexer's inputs of one decode step in one kernel (DSALayer._index_rotated, _quantize and the cache
    writes of its PyTorch path): -> (FP8 queries [B, n, d_i], their fp32 scales [B, n, groups], fp32 head weights
    [B, n] times weight_scale).

    q [B, n, d_i] and the normed keys k [B, d_i] before RoPE, which turns their first 2 x cos.size(-1) elements
    (cos, sin [1, R/2]: the position's angles); weights [B, n] unscaled. The key goes, quantized, into k_cache
    [>= B, slots, d_i] (float8_e4m3fn) and its scales into scale_cache [>= B, slots, groups] at slot
    input_pos % slots, on the device. One fp32 scale per `group` elements, as DSALayer._quantize.
    """
    B, N, D = q.shape
    rope = 2 * cos.size(-1)
    slots, groups = k_cache.size(1), scale_cache.size(-1)
    q, k, weights = q.contiguous(), k.contiguous(), weights.contiguous()
    q_fp8 = torch.empty(B, N, D, device=q.device, dtype=torch.float8_e4m3fn)
    q_scale = torch.empty(B, N, groups, device=q.device, dtype=torch.float32)
    w = torch.empty(B, N, device=q.device, dtype=torch.float32)
    _dsa_inputs_kernel[(B,)](q, weights, k, cos.contiguous(), sin.contiguous(), input_pos, q_fp8, q_scale, w, k_cache,
                             scale_cache, slots, weight_scale, N=N, D=D, R=rope, GROUPS=groups, GROUP=group,
                             GROUP_PAD=_pad(min(group, D)), N_PAD=_pad(N), num_warps=4)
    return q_fp8, q_scale, w


def dsa_index_scores(q_fp8: torch.Tensor, q_scale: torch.Tensor, weights: torch.Tensor, k_fp8: torch.Tensor,
                     k_scale: torch.Tensor, group: int, limit: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j weights[b, j] relu(dequant(q[b, j]) . dequant(k[b, s])) -> fp32 [B, slots]; given limit (a one-element
    tensor), -inf for the slots past it (their keys are not read).

    q_fp8 [B, n, d_i] with q_scale [B, n, groups] and k_fp8 [B, slots, d_i] with k_scale [B, slots, groups]: FP8
    (e4m3) values and fp32 scales, one per `group` elements; weights [B, n] fp32. All contiguous.
    """
    B, N, D = q_fp8.shape
    slots, groups = k_fp8.size(1), k_scale.size(-1)
    out = torch.empty(B, slots, device=q_fp8.device, dtype=torch.float32)
    cuda = q_fp8.is_cuda
    fp8 = cuda and torch.cuda.get_device_capability(q_fp8.device) >= (8, 9)
    group_pad = max(32, _pad(min(group, D)))  # FP8 products take at least 32 along the contraction

    def launch(config):
        block, warps, stages, keys_as_rows, fp8_dot, per_sm = config
        parts, keys_per_program = _split_keys(B, slots, block, q_fp8.device, per_sm)
        _dsa_index_kernel[(B, parts)](
            q_fp8, q_scale, weights, k_fp8, k_scale, out if limit is None else limit, out, slots, keys_per_program,
            N=N, D=D, GROUPS=groups, GROUP=group, GROUP_PAD=group_pad, N_PAD=_pad(N), BLOCK=block,
            MASK=limit is not None, KEYS_AS_ROWS=bool(keys_as_rows), DOT=(2 if fp8_dot and fp8 else 1) if cuda else 0,
            EVEN=groups == 1 and D == group_pad, num_warps=warps, num_stages=stages)
        return out

    configs = [config for config in INDEX_CONFIGS if fp8 or not config[4]]
    return launch(_fastest(("index", B, N, D, group, slots), configs, launch))


def topk_indices(scores: torch.Tensor, k: int, group: int | None = None) -> torch.Tensor:
    """The slots of the k largest of scores [B, S] per row, in no particular order: the set torch.topk returns
    (up to ties), by the method timed fastest for this shape, or `group`'s: 0, the radix selection of
    kvplan.models.triton_dsa.radix_topk (five kernels, whatever the scores); 1, plain torch.topk; g in
    TOPK_GROUPS, torch.topk through groups of g slots.

    With groups of g slots: the k groups with the largest maxima hold the top k. (Their maxima are k distinct
    scores >= T, the k-th largest maximum, so the k-th largest score is >= T; every other group's scores are
    <= T.) torch.topk then runs over k x g candidates instead of S.
    """
    B, S = scores.shape

    def launch(config):
        g = config[0]
        if g == 0:
            from .triton_dsa import radix_topk  # triton_dsa imports this module

            return radix_topk(scores, k)
        if g == 1:
            return scores.topk(k, dim=-1, sorted=False).indices
        groups = scores.view(B, S // g, g).amax(-1).topk(k, dim=-1, sorted=False).indices  # [B, k]
        candidates = (groups.unsqueeze(-1) * g + torch.arange(g, device=scores.device)).view(B, k * g)
        return candidates.gather(1, scores.gather(1, candidates).topk(k, dim=-1, sorted=False).indices)

    if group is not None:
        return launch((group,))
    configs = [(0,), (1,)] + [(g,) for g in TOPK_GROUPS if S % g == 0 and S // g >= 2 * k]
    return launch(_fastest(("topk", B, S, k), configs, launch))


def _pad(n: int) -> int:
    """Tile width for n elements: a power of two, at least 16 (the smallest tensor-core operand)."""
    return max(16, triton.next_power_of_2(n))


def sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors (4 off CUDA: the interpreter's grids stay small)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _split_keys(programs_per_split: int, slots: int, block: int, device: torch.device,
                per_sm: int = PROGRAMS_PER_SM, min_keys: int = MIN_KEYS_PER_SPLIT) -> tuple[int, int]:
    """(splits, keys per split, a multiple of block): about `per_sm` programs per SM in all (rounded down to
    whole splits), but no slice shorter than `min_keys`."""
    splits = max(1, min(triton.cdiv(slots, min_keys), per_sm * sm_count(device) // programs_per_split))
    keys_per_split = triton.cdiv(triton.cdiv(slots, splits), block) * block
    return triton.cdiv(slots, keys_per_split), keys_per_split


def _fastest(key: tuple, configs: list[tuple], launch) -> tuple:
    """The config of `configs` that runs `launch(config)` fastest on this shape, timed once per key (CUDA events
    around TIMED_CALLS calls, after a compiling call); configs[0] in the interpreter or while a CUDA graph is
    being captured. The GPU is held busy (torch.cuda._sleep) while the timed calls are queued, so the events
    time the kernels back to back, as a graph replays them, not the host's launch overhead, which exceeds
    a small kernel's time."""
    if key in CHOSEN:
        return CHOSEN[key]
    if not torch.cuda.is_available() or torch.cuda.is_current_stream_capturing() or len(configs) == 1:
        return configs[0]
    times = []
    for config in configs:
        try:
            launch(config)  # compiles
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            torch.cuda._sleep(HOLD_CYCLES)
            start.record()
            for _ in range(TIMED_CALLS):
                launch(config)
            stop.record()
            stop.synchronize()
            times.append((start.elapsed_time(stop) / TIMED_CALLS, config))
        except Exception:  # noqa: BLE001 - a config that does not compile here (e.g. out of shared memory)
            continue
    TIMINGS[key] = sorted(times)
    CHOSEN[key] = min(times)[1] if times else configs[0]
    return CHOSEN[key]


def _merge(acc: torch.Tensor, m: torch.Tensor, l: torch.Tensor, dtype: torch.dtype,
           balanced: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """acc [B, splits, H, D], m and l [B, splits, H] (fp32) -> [B, H, D] in dtype; `balanced`: (blocks a program,
    key blocks a row) of gluon_latent's BALANCED grids, whose rows have up to `splits` slices."""
    B, splits, H, D = acc.shape
    out = torch.empty(B, H, D, device=acc.device, dtype=dtype)
    # Slices per step: MERGE_SPLITS rows of MLA's 512-wide outputs, more of narrower ones (the same registers).
    step = max(MERGE_SPLITS, min(32, MERGE_SPLITS * 512 // _pad(D)))
    _merge_kernel[(B, H)](acc, m, l, out, splits, *balanced, H=H, D=D, D_PAD=_pad(D), STEP=step)
    return out


def mla_decode(q_cat: torch.Tensor, kv: torch.Tensor, input_pos: torch.Tensor, kv_lora_rank: int,
               chosen: torch.Tensor | None = None) -> torch.Tensor:
    """Absorbed MLA decode: softmax_s(q_cat[h] . kv[s]) kv[s, :L] over slots s <= input_pos -> [B, h, L].

    q_cat [B, h, L + R] carries the softmax scale; kv [B, slots, L + R] is the cache ([latent | rope key]),
    contiguous, in q_cat's dtype. chosen [B, k] (integer slot indices, any order, no repeats): attend only
    those slots (DSA's top-k), read in place; the ones past input_pos are left out. Static shapes and no host
    reads: capturable in a CUDA graph.
    """
    B, H, W = q_cat.shape
    slots, L = kv.size(1), kv_lora_rank
    q_cat = q_cat.contiguous()
    gather = chosen is not None
    n_keys = chosen.size(1) if gather else slots
    chosen = chosen.contiguous() if gather else input_pos  # unread without gather

    def launch(config):
        if config[0] == "gluon":
            return gluon_latent.decode(q_cat, kv, input_pos, L, chosen if gather else None, config[1:])
        block_h, block, warps, stages, min_keys = config
        head_blocks = triton.cdiv(H, block_h)
        splits, keys_per_split = _split_keys(B * head_blocks, n_keys, block, q_cat.device, MLA_PROGRAMS_PER_SM,
                                             min_keys)
        acc = torch.empty(B, splits, H, L, device=q_cat.device, dtype=torch.float32)
        m = torch.empty(B, splits, H, device=q_cat.device, dtype=torch.float32)
        l = torch.empty_like(m)
        _mla_decode_kernel[(head_blocks, B, splits)](
            q_cat, kv, chosen, input_pos, acc, m, l, slots, n_keys, keys_per_split, splits, H=H, L=L, R=W - L,
            L_PAD=_pad(L), R_PAD=_pad(W - L), BLOCK_H=min(block_h, _pad(H)), BLOCK=block,
            GATHER=gather, num_warps=warps, num_stages=stages)
        return _merge(acc, m, l, q_cat.dtype)  # timed with the kernel: shorter slices leave the merge more

    key = ("mla", B, H, W, L, slots, n_keys, gather, q_cat.dtype)
    slices = MLA_GATHERED_SLICES if gather else MLA_SLICES
    configs = [tiles + (keys,) for keys in slices for tiles in MLA_CONFIGS]
    if gluon_latent.serves(q_cat, L):  # timed beside the Triton kernel's configs, first when untimed
        configs = [("gluon",) + tiles + (per_sm, keys) for per_sm in gluon_latent.PROGRAMS_PER_SM for keys in slices
                   for tiles in gluon_latent.CONFIGS] + configs
    return launch(_fastest(key, configs, launch))


def dense_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, limit: torch.Tensor, scale: float
                 ) -> torch.Tensor:
    """softmax_s(scale q[h] . k[s]) v[s] over slots s <= limit of each head's KV head -> [B, h, d].

    q [B, h, d]; k and v [B, kv, slots, d], contiguous, in q's dtype; query head i reads KV head i // (h / kv)
    (MHA: kv = h, MQA: kv = 1). limit: a one-element tensor (the decode position, or its offset in a chunked
    layer's chunk). Static shapes and no host reads: capturable in a CUDA graph.
    """
    B, H, D = q.shape
    KV, slots = k.size(1), k.size(2)
    q = q.contiguous()
    LOG2E = 1.4426950408889634

    def launch(config):
        block, warps, stages, min_keys = config
        splits, keys_per_split = _split_keys(B * KV, slots, block, q.device, min_keys=min_keys)
        acc = torch.empty(B, splits, H, D, device=q.device, dtype=torch.float32)
        m = torch.empty(B, splits, H, device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        _dense_decode_kernel[(KV, B, splits)](q, k, v, limit, acc, m, l, slots, keys_per_split, splits,
                                              scale * LOG2E, KV=KV, G=H // KV, D=D, G_PAD=_pad(H // KV),
                                              D_PAD=_pad(D), BLOCK=block, num_warps=warps, num_stages=stages)
        return _merge(acc, m, l, q.dtype)  # timed with the kernel: more slices leave the merge more

    return launch(_fastest(("dense", B, H, KV, D, slots, q.dtype), DENSE_CONFIGS, launch))


def tpa_decode(q: torch.Tensor, a_k: torch.Tensor, b_k: torch.Tensor, a_v: torch.Tensor, b_v: torch.Tensor,
               input_pos: torch.Tensor, b_q: torch.Tensor | None = None) -> torch.Tensor:
    """sum over live slots s of softmax_s(sum_r A_K[r,h,s] (q[h] . B_K[s,r])) sum_r A_V[r,h,s] B_V[s,r] -> [B, h, d].

    q [B, h, d] is the rebuilt query, carrying the softmax scale and 1/R_K; or, given b_q [B, R_Q, d], q is
    A_Q [B, h, R_Q] carrying the softmax scale and 1/(R_Q R_K), and q[h] . B_K is A_Q[h] . (B_Q B_K^T) (the
    FlashTPA order). The caller applies 1/R_V. A caches [B, R, h, slots], B caches [B, slots, R, d],
    contiguous. Static shapes and no host reads: capturable in a CUDA graph.
    """
    B, H = q.shape[:2]
    D, r_k, r_v, slots = b_k.size(-1), a_k.size(1), a_v.size(1), a_k.size(3)
    r_q = 0 if b_q is None else q.size(-1)
    q = q.contiguous()
    b_q = q if b_q is None else b_q.contiguous()

    def launch(config):
        block, warps, stages, min_keys = config
        splits, keys_per_split = _split_keys(B, slots, block, q.device, min_keys=min_keys)
        acc = torch.empty(B, splits, H, D, device=q.device, dtype=torch.float32)
        m = torch.empty(B, splits, H, device=q.device, dtype=torch.float32)
        l = torch.empty_like(m)
        _tpa_decode_kernel[(B, splits)](q, b_q, a_k, b_k, a_v, b_v, input_pos, acc, m, l, slots, keys_per_split,
                                        splits, H=H, D=D, RK=r_k, RV=r_v, RQ=r_q, H_PAD=_pad(H), D_PAD=_pad(D),
                                        RQ_PAD=_pad(r_q), BLOCK=block, EVEN=slots % block == 0, num_warps=warps,
                                        num_stages=stages)
        return acc, m, l

    config = _fastest(("tpa", B, H, D, r_q, r_k, r_v, slots, q.dtype), TPA_CONFIGS, launch)
    return _merge(*launch(config), q.dtype)
