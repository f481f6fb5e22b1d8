"""Triton kernels for DeepSeek Sparse Attention prefill (used on CUDA tensors when Triton is installed).

Per chunk of queries, the PyTorch path (kvplan.models.dsa) dequantizes every FP8 indexer key, writes each
indexer head's scores over the whole prompt (index_n_heads values per query and key), sorts out the top k with
torch.topk, gathers the top-k latent rows of every query ([queries, k, L + R], about 2.4 MB a query at
k = 2048) and runs attention over the copies. Here:
- `index_scores`: one kernel reads the FP8 keys and their scales once per block of queries, computes every
  head's dot products on the tensor cores ((query, head) rows x keys), applies the ReLU and sums the heads
  with their weights as a second tensor-core product (a block-diagonal weight matrix), and writes one fp32
  score per (query, key). Key blocks a query block cannot see (past its last query, before its window) are
  not read; their scores are written as -inf.
- `select_topk`: the exact top k per query, one program a row: the k-th largest group maximum bounds the
  k-th largest score from below; the scores above that bound (about k of them) are compacted into a few
  thousand slots and the k-th largest found among them by bisection on chip: two reads of the scores, no
  sort. The chosen keys come out in position order, which the sparse attention reads about twice as fast
  as torch.topk's order (neighbouring rows of the cache, fetched together).
- `sparse_latent_attention`: absorbed MLA attention of each query over its top-k latent rows, read in place
  through the indices (no gathered copy), with the online softmax of the decode kernels; every head of the
  query is a row of the tensor-core products, so one latent row read serves all of them. On Hopper, with heads
  a multiple of 64 and no window, kvplan.models.gluon_latent's kernel is timed beside it and runs when faster.
- `radix_topk`: the same selection for few long rows (a decode step's, one per sequence over the whole cache,
  which one program a row would take serially): each row cut into parts, a program a part, in five passes.
All equal the PyTorch path up to rounding, and select_topk and radix_topk pick the values torch.topk picks
(tests/test_triton_dsa.py, on a GPU or Triton's interpreter).
"""

from __future__ import annotations

import torch

from kvplan.kinds.dsa import topk_layout

from . import gluon_latent
from .triton_decode import HAVE_TRITON, _fastest, _pad, _split_keys, enabled

if HAVE_TRITON:
    from .triton_decode import _fp8_rows, _latent_block, _latent_query, _latent_update

if HAVE_TRITON:
    import triton
    import triton.language as tl

# (queries per program, keys per step, warps, pipeline stages); the first entry serves where nothing is timed.
INDEX_CONFIGS = [(2, 64, 4, 4), (2, 128, 8, 3), (2, 64, 4, 3), (4, 64, 8, 3), (1, 128, 4, 3), (2, 128, 8, 2),
                 (4, 128, 8, 2), (2, 128, 8, 4)]
# (scores per step of select_topk's passes over a row, warps)
TOPK_CONFIGS = [(2048, 8), (4096, 8), (8192, 8), (2048, 4), (4096, 4), (1024, 4)]
# radix_topk: (scores per step, warps, programs per SM over all rows' parts)
RADIX_CONFIGS = [(2048, 4, 2), (1024, 4, 2), (2048, 8, 2), (1024, 4, 4)]
# (heads per program, keys per step, warps, pipeline stages, rows loaded as they lie).
SPARSE_CONFIGS = [(64, 64, 8, 2, True), (64, 64, 8, 3, True), (64, 32, 8, 3, True), (32, 64, 4, 3, True),
                  (32, 32, 4, 3, True), (32, 64, 8, 2, True), (32, 32, 4, 4, True), (32, 64, 8, 2, False),
                  (16, 32, 4, 2, False), (32, 16, 4, 3, False)]


def serves(x: torch.Tensor) -> bool:
    """Whether DSA prefill runs these kernels: the decode kernels' conditions (kvplan.models.triton_decode)."""
    return enabled(x)


if HAVE_TRITON:
    @triton.jit
    def _fp8_dot(k, q, FP8_DOT: tl.constexpr):
        """k [BN, d] . q [M, d]^T in fp32: FP8 tensor cores, or fp32 products (exact for FP8 values)."""
        if FP8_DOT:
            return tl.dot(k, tl.trans(q))
        return tl.dot(k.to(tl.float32), tl.trans(q.to(tl.float32)))


    @triton.jit
    def _index_prefill_kernel(q_ptr, qs_ptr, w_ptr, k_ptr, ks_ptr, out_ptr, T, C, S, q_start, k_first, window,
                              N: tl.constexpr, D: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr,
                              GROUP_PAD: tl.constexpr, N_PAD: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr,
                              WINDOWED: tl.constexpr, FP8_DOT: tl.constexpr):
        # Columns of the first product: (query, head) pairs, BQ queries of N_PAD heads each; rows: BN keys.
        # Keys [BN, d] are the first operand and the queries the second, K-major, as FP8 tensor cores take them.
        qb = tl.program_id(0)
        b = tl.program_id(1)
        M: tl.constexpr = BQ * N_PAD
        cols = tl.arange(0, M)
        col_q = qb * BQ + cols // N_PAD  # query of each column, within the chunk
        col_h = cols % N_PAD
        col_ok = (col_q < C) & (col_h < N)
        col_row = (b * C + col_q).to(tl.int64) * N + col_h  # (query, head) row of q, q_scale and weights
        dims0 = tl.arange(0, GROUP_PAD)
        dims0_ok = (dims0 < D) & (dims0 < GROUP)
        q0 = tl.load(q_ptr + col_row[:, None] * D + dims0[None, :], mask=col_ok[:, None] & dims0_ok[None, :], other=0.0)
        # Block-diagonal weights [M, 16]: column i holds query i's head weights in its heads' rows. With one
        # scale group the query scales fold into them and the key scale multiplies the sum (both are positive,
        # so they pass through the ReLU).
        sel = tl.arange(0, 16)
        w_col = tl.load(w_ptr + col_row, mask=col_ok, other=0.0).to(tl.float32)
        if GROUPS == 1:
            w_col = w_col * tl.load(qs_ptr + col_row, mask=col_ok, other=0.0)
        wmat = tl.where((cols // N_PAD)[:, None] == sel[None, :], w_col[:, None], 0.0).to(w_ptr.dtype.element_ty)
        out_q = qb * BQ + sel
        out_ok = (sel < BQ) & (out_q < C)
        pos_q = q_start + out_q  # absolute positions of the block's queries
        out_cols = out_ptr + (b * C + out_q).to(tl.int64)[None, :] * S
        k_base = k_ptr + (b.to(tl.int64) * T + k_first) * D
        ks_base = ks_ptr + (b.to(tl.int64) * T + k_first) * GROUPS
        # Keys (relative to k_first) some query of the block may see: [lo, hi).
        hi = tl.minimum(q_start + qb * BQ + BQ - 1, q_start + C - 1) - k_first + 1
        lo = 0
        if WINDOWED:
            lo = tl.maximum(q_start + qb * BQ - window + 1 - k_first, 0)
        lo = lo // BN * BN
        hi_end = lo + tl.cdiv(hi - lo, BN) * BN
        blank = tl.full([BN, 16], float("-inf"), tl.float32)
        for start in range(0, lo, BN):
            s = start + tl.arange(0, BN)
            tl.store(out_cols + s[:, None], blank, mask=out_ok[None, :] & (s < S)[:, None])
        for start in range(lo, hi, BN):
            s = start + tl.arange(0, BN)
            key_ok = s < S
            if GROUPS == 1:
                kg = tl.load(k_base + s[:, None] * D + dims0[None, :], mask=key_ok[:, None] & dims0_ok[None, :],
                             other=0.0)  # [BN, GROUP_PAD], FP8
                ks = tl.load(ks_base + s, mask=key_ok, other=0.0)
                acc = _fp8_dot(kg, q0, FP8_DOT)
                score = tl.dot(tl.maximum(acc, 0.0).to(wmat.dtype), wmat) * ks[:, None]  # [BN, 16]
            else:
                acc = tl.zeros([BN, M], tl.float32)
                for g in tl.static_range(GROUPS):
                    dims = g * GROUP + tl.arange(0, GROUP_PAD)
                    dim_ok = (dims < D) & (dims < (g + 1) * GROUP)
                    qg = tl.load(q_ptr + col_row[:, None] * D + dims[None, :], mask=col_ok[:, None] & dim_ok[None, :],
                                 other=0.0)
                    qs = tl.load(qs_ptr + col_row * GROUPS + g, mask=col_ok, other=0.0)
                    kg = tl.load(k_base + s[:, None] * D + dims[None, :], mask=key_ok[:, None] & dim_ok[None, :],
                                 other=0.0)
                    ks = tl.load(ks_base + s * GROUPS + g, mask=key_ok, other=0.0)
                    acc += _fp8_dot(kg, qg, FP8_DOT) * ks[:, None] * qs[None, :]
                score = tl.dot(tl.maximum(acc, 0.0).to(wmat.dtype), wmat)  # [BN, 16]: the heads' weighted sum
            k_pos = k_first + s
            ok = (k_pos[:, None] <= pos_q[None, :]) & key_ok[:, None]
            if WINDOWED:
                ok = ok & (pos_q[None, :] - k_pos[:, None] < window)
            tl.store(out_cols + s[:, None], tl.where(ok, score, float("-inf")), mask=out_ok[None, :] & key_ok[:, None])
        for start in range(hi_end, S, BN):
            s = start + tl.arange(0, BN)
            tl.store(out_cols + s[:, None], blank, mask=out_ok[None, :] & (s < S)[:, None])


    @triton.jit
    def _quantize_kernel(x_ptr, q8_ptr, qs_ptr, rows, D: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr,
                         GROUP_PAD: tl.constexpr, BLOCK_ROWS: tl.constexpr):
        # BLOCK_ROWS rows a program, one scale group at a time.
        r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        r_ok = r < rows
        for g in tl.static_range(GROUPS):
            dims = g * GROUP + tl.arange(0, GROUP_PAD)
            dim_ok = (dims < D) & (tl.arange(0, GROUP_PAD) < GROUP)
            ok = r_ok[:, None] & dim_ok[None, :]
            x = tl.load(x_ptr + r.to(tl.int64)[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            q8, qs = _fp8_rows(x, dim_ok)
            tl.store(q8_ptr + r.to(tl.int64)[:, None] * D + dims[None, :], q8, mask=ok)
            tl.store(qs_ptr + r * GROUPS + g, qs, mask=r_ok)


    @triton.jit
    def _row_block(q_lat, q_rope, row, live, m, l, acc, L: tl.constexpr, R: tl.constexpr, L_PAD: tl.constexpr,
                   R_PAD: tl.constexpr):
        """_latent_update over the gathered rows at pointers `row` [BLOCK, 1], loaded as they lie ([BLOCK, L_PAD]:
        one row's elements contiguous along the tile's fast axis)."""
        lat = tl.arange(0, L_PAD)
        rope = tl.arange(0, R_PAD)
        k_lat = tl.load(row + lat[None, :], mask=live[:, None] & (lat < L)[None, :], other=0.0)  # [BLOCK, L_PAD]
        k_rope = tl.load(row + L + rope[None, :], mask=live[:, None] & (rope < R)[None, :], other=0.0)
        return _latent_update(q_lat, q_rope, k_lat, k_rope, live, m, l, acc)


    @triton.jit
    def _sparse_mla_kernel(q_ptr, kv_ptr, top_ptr, out_ptr, T, C, K, q_start, k_first, window,
                           H: tl.constexpr, L: tl.constexpr, R: tl.constexpr, L_PAD: tl.constexpr,
                           R_PAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK: tl.constexpr, WINDOWED: tl.constexpr,
                           ROWS_FIRST: tl.constexpr, ASCENDING: tl.constexpr):
        # Queries vary fastest: neighbouring queries, whose top-k sets overlap, run together and share L2.
        c = tl.program_id(0)
        hb = tl.program_id(1)
        b = tl.program_id(2)
        heads, q_lat, q_rope = _latent_query(q_ptr, (b * C + c).to(tl.int64) * H, hb, H, L, R, L_PAD, R_PAD,
                                             BLOCK_H)  # scaled
        pos = q_start + c
        kv_base = kv_ptr + b.to(tl.int64) * T * (L + R)
        top_row = top_ptr + (b * C + c).to(tl.int64) * K
        m = tl.full([BLOCK_H], -1e30, tl.float32)
        l = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, L_PAD], tl.float32)
        n_keys = K
        if ASCENDING:  # distinct keys in ascending order: the j-th is at least j, so none past the query attends
            n_keys = tl.minimum(K, pos - k_first + 1)
        for start in range(0, n_keys, BLOCK):
            n = start + tl.arange(0, BLOCK)
            k_pos = k_first + tl.load(top_row + n, mask=n < K, other=0)
            live = (n < K) & (k_pos <= pos)
            if WINDOWED:
                live = live & (pos - k_pos < window)
            if ROWS_FIRST:
                m, l, acc = _row_block(q_lat, q_rope, kv_base + k_pos.to(tl.int64)[:, None] * (L + R), live, m, l,
                                       acc, L, R, L_PAD, R_PAD)
            else:
                m, l, acc = _latent_block(q_lat, q_rope, kv_base + k_pos.to(tl.int64)[None, :] * (L + R), live, m, l,
                                          acc, L, R, L_PAD, R_PAD)
        lat = tl.arange(0, L_PAD)
        out = (b * C + c).to(tl.int64) * H + heads
        tl.store(out_ptr + out[:, None] * L + lat[None, :], (acc / l[:, None]).to(out_ptr.dtype.element_ty),
                 mask=(heads < H)[:, None] & (lat < L)[None, :])


    @triton.jit
    def _ordered(x):
        """fp32 -> int32 whose signed order is the floats' order (NaN-free input): negative floats' magnitude
        bits flipped."""
        bits = x.to(tl.int32, bitcast=True)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)


    @triton.jit
    def _row_keys(scores, start, S, BLOCK: tl.constexpr):
        """Positions start.. and the ordered keys of a row's BLOCK scores; INT32_MIN past the row's S."""
        s = start + tl.arange(0, BLOCK)
        return s, tl.where(s < S, _ordered(tl.load(scores + s, mask=s < S, other=0.0)), -2147483648)


    @triton.jit
    def _kth_key(keys, K, least, most):
        """The K-th largest of int32 `keys` (padding holds INT32_MIN), given least <= it <= most: the largest t with
        at least K keys >= t, by bisection (one count over the tile in registers per halving of most - least)."""
        lo = least.to(tl.int64)  # count(keys >= lo) >= K
        hi = most.to(tl.int64) + 1  # count(keys >= hi) < K
        while hi - lo > 1:
            mid = lo + (hi - lo) // 2
            enough = tl.sum((keys >= mid.to(tl.int32)).to(tl.int32), axis=0) >= K
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid)
        return lo.to(tl.int32)


    @triton.jit
    def _topk_kernel(s_ptr, gmax_ptr, ckey_ptr, cidx_ptr, out_ptr, S, K, NG, G: tl.constexpr, NG_PAD: tl.constexpr,
                     BLOCK: tl.constexpr, W: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        scores = s_ptr + row * S
        lowest: tl.constexpr = -2147483648
        # 1. The maximum key of every group of G consecutive scores. The K-th largest of them, tau, is at most
        # the K-th largest score (K groups hold a score >= tau each), so every selected score is >= tau.
        gmax = gmax_ptr + row * NG_PAD
        for start in range(0, S, BLOCK):
            s, key = _row_keys(scores, start, S, BLOCK)
            g = start // G + tl.arange(0, BLOCK // G)
            tl.store(gmax + g, tl.max(tl.reshape(key, [BLOCK // G, G]), axis=1), mask=g < NG)
        tl.debug_barrier()  # the maxima written above are read back by other threads of this program
        maxima = tl.load(gmax + tl.arange(0, NG_PAD), mask=tl.arange(0, NG_PAD) < NG, other=lowest)
        tau = _kth_key(maxima, K, tl.min(tl.where(maxima > lowest, maxima, 2147483647), axis=0), tl.max(maxima, axis=0))
        # 2. The candidates (keys >= tau), compacted in position order into W slots.
        ckey = ckey_ptr + row * W
        cidx = cidx_ptr + row * W
        n = tl.full([], 0, tl.int32)
        for start in range(0, S, BLOCK):
            s, key = _row_keys(scores, start, S, BLOCK)
            take = key >= tau
            slot = n + tl.cumsum(take.to(tl.int32), axis=0) - 1
            tl.store(ckey + slot, key, mask=take & (slot < W))
            tl.store(cidx + slot, s, mask=take & (slot < W))
            n += tl.sum(take.to(tl.int32), axis=0)
        tl.debug_barrier()
        out = out_ptr + row * K
        if n <= W:
            # 3. The K-th largest candidate t; every candidate above t, then those equal to t in position order.
            c = tl.arange(0, W)
            key = tl.load(ckey + c, mask=c < n, other=lowest)
            t = _kth_key(key, K, tau, tl.max(key, axis=0))
            above = key > t
            tied = key == t
            take = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= K - tl.sum(above.to(tl.int32), axis=0)))
            slot = tl.cumsum(take.to(tl.int32), axis=0) - 1
            tl.store(out + slot, tl.load(cidx + c, mask=take, other=0), mask=take)
        else:
            # More candidates than slots (many equal or clustered scores): the same selection over the whole row,
            # each bisection step a pass over it.
            lo = tau.to(tl.int64)
            hi = tl.full([], 2147483648, tl.int64)
            for _ in range(32):
                mid = lo + (hi - lo) // 2
                count = tl.full([], 0, tl.int32)
                for start in range(0, S, BLOCK):
                    s, key = _row_keys(scores, start, S, BLOCK)
                    count += tl.sum((key >= mid.to(tl.int32)).to(tl.int32), axis=0)
                enough = count >= K
                lo = tl.where(enough, mid, lo)
                hi = tl.where(enough, hi, mid)
            t = lo.to(tl.int32)
            above_total = tl.full([], 0, tl.int32)
            for start in range(0, S, BLOCK):
                s, key = _row_keys(scores, start, S, BLOCK)
                above_total += tl.sum((key > t).to(tl.int32), axis=0)
            written = tl.full([], 0, tl.int32)
            tied_seen = tl.full([], 0, tl.int32)
            for start in range(0, S, BLOCK):
                s, key = _row_keys(scores, start, S, BLOCK)
                tied = key == t
                take = (key > t) | (tied & (tied_seen + tl.cumsum(tied.to(tl.int32), axis=0) <= K - above_total))
                slot = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
                tl.store(out + slot, s, mask=take)
                written += tl.sum(take.to(tl.int32), axis=0)
                tied_seen += tl.sum(tied.to(tl.int32), axis=0)


    @triton.jit
    def _radix_keys(scores, start, end, BLOCK: tl.constexpr):
        """Positions start.. of a row, whether each is before `end`, and its score's ordered key as an int64 in
        [0, 2^32) (so shifts read its bytes, highest first)."""
        s = start + tl.arange(0, BLOCK)
        ok = s < end
        return s, ok, _ordered(tl.load(scores + s, mask=ok, other=0.0)).to(tl.int64) + 2147483648


    @triton.jit
    def _radix_prefix(hist, K, P, PASSES: tl.constexpr, P_PAD: tl.constexpr):
        """From one row's byte histograms (hist: [4, P, 256], pass, part of the row, byte value) of passes
        0..PASSES-1: the PASSES highest bytes of the K-th largest key, as one number, and its rank among the keys
        that share them (K less the keys above them)."""
        parts = tl.arange(0, P_PAD)
        values = tl.arange(0, 256)
        prefix = tl.full([], 0, tl.int64)
        rank = tl.full([], 0, tl.int32) + K
        for q in tl.static_range(PASSES):
            counts = tl.sum(tl.load(hist + (q * P + parts[:, None]) * 256 + values[None, :],
                                    mask=(parts < P)[:, None], other=0), axis=0)  # [256], over the parts
            at_or_above = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts
            byte = tl.max(tl.where(at_or_above >= rank, values, -1), axis=0)  # the K-th largest's byte
            rank -= tl.sum(tl.where(values > byte, counts, 0), axis=0)
            prefix = prefix * 256 + byte
        return prefix, rank


    @triton.jit
    def _radix_pass_kernel(s_ptr, hist_ptr, above_ptr, S, K, part_len, P, PASS: tl.constexpr, P_PAD: tl.constexpr,
                           BLOCK: tl.constexpr):
        # Program (row, part): the histogram of byte PASS of the part's keys whose higher bytes are the K-th
        # largest key's (found from the earlier passes' histograms of every part); pass 3 also counts the part's
        # keys above the K-th largest's three high bytes.
        row = tl.program_id(0)
        p = tl.program_id(1)
        scores = s_ptr + row.to(tl.int64) * S
        hist = hist_ptr + row * 4 * P * 256
        prefix, rank = _radix_prefix(hist, K, P, PASS, P_PAD)
        first = p * part_len
        end = tl.minimum(first + part_len, S)
        counts = tl.zeros([256], tl.int32)
        above = tl.full([], 0, tl.int32)
        for start in range(first, end, BLOCK):
            s, ok, key = _radix_keys(scores, start, end, BLOCK)
            high = key >> (32 - 8 * PASS)
            counts += tl.histogram(((key >> (24 - 8 * PASS)) & 255).to(tl.int32), 256, mask=ok & (high == prefix))
            if PASS == 3:
                above += tl.sum((ok & (high > prefix)).to(tl.int32), axis=0)
        tl.store(hist + (PASS * P + p) * 256 + tl.arange(0, 256), counts)
        if PASS == 3:
            tl.store(above_ptr + row * P + p, above)


    @triton.jit
    def _radix_take_kernel(s_ptr, hist_ptr, above_ptr, out_ptr, S, K, part_len, P, P_PAD: tl.constexpr,
                           BLOCK: tl.constexpr):
        # Program (row, part): the K-th largest key t and how many keys equal to it are taken (rank); per part of
        # the row, its keys above t and equal to t (from pass 3's histograms); the part's keys above t, then those
        # equal to t while the row's lowest-positioned `rank` of them last, written in position order at the
        # part's offset: the sum of what the parts before it take.
        row = tl.program_id(0)
        p = tl.program_id(1)
        scores = s_ptr + row.to(tl.int64) * S
        hist = hist_ptr + row * 4 * P * 256
        t, rank = _radix_prefix(hist, K, P, 4, P_PAD)
        parts = tl.arange(0, P_PAD)
        values = tl.arange(0, 256)
        last = tl.load(hist + (3 * P + parts[:, None]) * 256 + values[None, :], mask=(parts < P)[:, None], other=0)
        byte = (t & 255).to(tl.int32)
        above = tl.load(above_ptr + row * P + parts, mask=parts < P, other=0) + tl.sum(
            tl.where(values[None, :] > byte, last, 0), axis=1)
        tied = tl.sum(tl.where(values[None, :] == byte, last, 0), axis=1)
        take = tl.minimum(tl.maximum(rank - (tl.cumsum(tied, axis=0) - tied), 0), tied)  # ties each part takes
        n = tl.sum(tl.where(parts < p, above + take, 0), axis=0)  # this part's first output slot
        my_take = tl.sum(tl.where(parts == p, take, 0), axis=0)
        seen = tl.full([], 0, tl.int32)
        out = out_ptr + row.to(tl.int64) * K
        first = p * part_len
        end = tl.minimum(first + part_len, S)
        for start in range(first, end, BLOCK):
            s, ok, key = _radix_keys(scores, start, end, BLOCK)
            tie = ok & (key == t)
            chosen = (ok & (key > t)) | (tie & (seen + tl.cumsum(tie.to(tl.int32), axis=0) <= my_take))
            tl.store(out + n + tl.cumsum(chosen.to(tl.int32), axis=0) - 1, s, mask=chosen)
            n += tl.sum(chosen.to(tl.int32), axis=0)
            seen += tl.sum(tie.to(tl.int32), axis=0)


def quantize(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DSALayer._quantize in one kernel: x [..., d] -> (FP8 e4m3 values [..., d], fp32 scales [..., groups]), one
    scale (amax / 448) per `group` elements of the last dimension, the last group possibly shorter."""
    D = x.size(-1)
    groups = -(-D // group)
    x = x.contiguous()
    rows = x.numel() // D
    q8 = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty(x.shape[:-1] + (groups,), device=x.device, dtype=torch.float32)
    block_rows = 32
    _quantize_kernel[(triton.cdiv(rows, block_rows),)](x, q8, scale, rows, D=D, GROUPS=groups, GROUP=group,
                                                       GROUP_PAD=_pad(min(group, D)), BLOCK_ROWS=block_rows,
                                                       num_warps=4)
    return q8, scale


def index_scores(q_fp8: torch.Tensor, q_scale: torch.Tensor, weights: torch.Tensor, k_fp8: torch.Tensor,
                 k_scale: torch.Tensor, group: int, q_start: int, k_first: int, window: int | None) -> torch.Tensor:
    """Indexer scores of the C queries at q_start.. over keys k_first..q_start+C-1 -> fp32 [B, C, S], -inf where
    the key is not visible (after the query, or outside its window).

    q_fp8 [B, C, n, d_i] with q_scale [B, C, n, groups], weights [B, C, n], k_fp8 [B, T, d_i] with k_scale
    [B, T, groups]: FP8 (e4m3) values and fp32 scales, one per `group` elements. score = sum_j weights[j]
    relu(dequant(q[j]) . dequant(k)). Every tensor contiguous.
    """
    B, C, N, D = q_fp8.shape
    T, groups = k_fp8.size(1), k_scale.size(-1)
    S = q_start + C - k_first
    out = torch.empty(B, C, S, device=q_fp8.device, dtype=torch.float32)
    n_pad = _pad(N)
    fp8_dot = q_fp8.is_cuda and torch.cuda.get_device_capability(q_fp8.device) >= (8, 9)

    def launch(config):
        bq, bn, warps, stages = config
        bq = min(bq, max(1, 256 // n_pad))
        _index_prefill_kernel[(triton.cdiv(C, bq), B)](
            q_fp8, q_scale, weights, k_fp8, k_scale, out, T, C, S, q_start, k_first, window or 0, N=N, D=D,
            GROUPS=groups, GROUP=group, GROUP_PAD=max(32, _pad(min(group, D))), N_PAD=n_pad, BQ=bq, BN=bn,
            WINDOWED=window is not None, FP8_DOT=fp8_dot, num_warps=warps, num_stages=stages)

    # One timing per (shape, power-of-two span of keys): spans grow chunk by chunk through a prompt.
    key = ("dsa-index", B, C, N, D, group, weights.dtype, triton.next_power_of_2(S), window is not None)
    launch(_fastest(key, INDEX_CONFIGS, launch))
    return out


def sparse_latent_attention(q_cat: torch.Tensor, latent: torch.Tensor, top: torch.Tensor, q_start: int,
                            k_first: int, kv_lora_rank: int, window: int | None,
                            config: tuple | None = None, ascending: bool = False) -> torch.Tensor:
    """Absorbed MLA attention of queries q_start.. over their selected latent rows -> [B, C, h, L] (`config`: one
    of SPARSE_CONFIGS instead of the fastest).

    q_cat [B, C, h, L + R] carries the softmax scale; latent [B, T, L + R] the whole prompt's [latent | rope
    key] rows; top [B, C, K] the selected keys, as offsets from k_first, distinct. A selected key after the query
    or outside its window (topk's picks among -inf scores when fewer than K keys are visible) is skipped;
    `ascending` (each row of top in ascending order, as select_topk writes them): the picks past position
    query - k_first are not visited at all (an early query of a prompt sees fewer than K keys).
    """
    B, C, H, W = q_cat.shape
    T, K, L = latent.size(1), top.size(-1), kv_lora_rank
    q_cat, latent, top = q_cat.contiguous(), latent.contiguous(), top.contiguous()
    out = torch.empty(B, C, H, L, device=q_cat.device, dtype=q_cat.dtype)

    def launch(config):
        if config[0] == "gluon":
            gluon_latent.sparse_prefill(q_cat, latent, top, q_start, k_first, L, out, config[1:], ascending)
            return
        block_h, block, warps, stages, rows_first = config
        block_h = min(block_h, _pad(H))
        _sparse_mla_kernel[(C, triton.cdiv(H, block_h), B)](
            q_cat, latent, top, out, T, C, K, q_start, k_first, window or 0, H=H, L=L, R=W - L, L_PAD=_pad(L),
            R_PAD=_pad(W - L), BLOCK_H=block_h, BLOCK=block, WINDOWED=window is not None, ROWS_FIRST=rows_first,
            ASCENDING=ascending, num_warps=warps, num_stages=stages)

    configs = SPARSE_CONFIGS
    if gluon_latent.serves(q_cat, L, window):  # timed beside the Triton kernel's configs, first when untimed
        configs = [("gluon",) + tiles for tiles in gluon_latent.CONFIGS] + configs
    launch(config or _fastest(("dsa-sparse", B, C, H, W, L, K, q_cat.dtype, ascending), configs, launch))
    return out


def select_topk(scores: torch.Tensor, k: int, config: tuple | None = None) -> torch.Tensor:
    """The k highest scores' positions along the last dimension of fp32 `scores` -> int32 [..., k], in position
    order (`config`: one of TOPK_CONFIGS instead of the fastest).

    Exact: every score above the k-th largest, then as many of those equal to it as k leaves, lowest positions
    first (torch.topk breaks ties in no stated order; its values and ours are the same multiset). One program a
    row: the maxima of groups of G scores (a pass over the row), their k-th largest tau (at most the k-th largest
    score), the scores >= tau compacted in position order into W slots (a second pass), and the k-th largest of
    those by bisection on chip. Rows whose candidates overflow the slots (many equal scores) bisect over the
    whole row instead.
    """
    *lead, S = scores.shape
    if k >= S:
        return torch.arange(S, device=scores.device, dtype=torch.int32).expand(*lead, S)
    rows = scores.reshape(-1, S)
    group, groups, groups_pad, slots = topk_layout(S, k)
    n = rows.size(0)
    gmax = torch.empty(n, groups_pad, device=scores.device, dtype=torch.int32)
    ckey = torch.empty(n, slots, device=scores.device, dtype=torch.int32)
    cidx = torch.empty(n, slots, device=scores.device, dtype=torch.int32)
    out = torch.empty(n, k, device=scores.device, dtype=torch.int32)

    def launch(config):
        block, warps = config
        _topk_kernel[(n,)](rows, gmax, ckey, cidx, out, S, k, groups, G=group, NG_PAD=groups_pad,
                           BLOCK=max(group, min(block, triton.next_power_of_2(S))), W=slots, num_warps=warps)

    launch(config or _fastest(("dsa-topk", n, triton.next_power_of_2(S), k), TOPK_CONFIGS, launch))
    return out.view(*lead, k)


def radix_topk(scores: torch.Tensor, k: int, config: tuple | None = None) -> torch.Tensor:
    """The k highest scores' positions in each row of fp32 `scores` [rows, S] -> int32 [rows, k], in position order,
    for few long rows (decode's: one per sequence over the whole cache); `config`: one of RADIX_CONFIGS instead of
    the fastest.

    Exact, with select_topk's choice among equal scores (the lowest positions), and in a time that does not
    depend on the scores (select_topk's bound from group maxima is weak where most scores are -inf, as in a
    decode step early in a long cache). Each row is cut into parts, a program a part: four passes find the
    k-th largest score's ordered key t a byte at a time (each pass a histogram of the next byte among the keys
    matching the bytes found, per part; the next pass sums the parts' histograms), and a fifth writes every key
    above t and the first ties at t, at offsets summed from the parts' counts. Five reads of the scores, no sort,
    no atomics.
    """
    rows, S = scores.shape
    if k >= S:
        return torch.arange(S, device=scores.device, dtype=torch.int32).expand(rows, S)
    scores = scores.contiguous()
    out = torch.empty(rows, k, device=scores.device, dtype=torch.int32)

    def launch(config):
        block, warps, per_sm = config
        parts, part_len = _split_keys(rows, S, block, scores.device, per_sm, block)
        hist = torch.empty(rows, 4, parts, 256, device=scores.device, dtype=torch.int32)
        above = torch.empty(rows, parts, device=scores.device, dtype=torch.int32)
        p_pad = triton.next_power_of_2(parts)
        for step in range(4):
            _radix_pass_kernel[(rows, parts)](scores, hist, above, S, k, part_len, parts, PASS=step, P_PAD=p_pad,
                                              BLOCK=block, num_warps=warps)
        _radix_take_kernel[(rows, parts)](scores, hist, above, out, S, k, part_len, parts, P_PAD=p_pad, BLOCK=block,
                                          num_warps=warps)

    launch(config or _fastest(("radix-topk", rows, S, k), RADIX_CONFIGS, launch))
    return out
