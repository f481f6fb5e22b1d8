"""MLA's absorbed latent attention over cached rows, written in Gluon (Triton's explicit-layout language) for Hopper.

One kernel for the three loops over latent rows at 64 heads a program: MLA decode over a sequence's cache, DSA
decode over its chosen rows, and DSA's sparse prefill (each query over its top-k rows). The results equal the
Triton kernels' (triton_decode.mla_decode, triton_dsa.sparse_latent_attention), which serve where this one
cannot (no Hopper GPU, a Triton without Gluon, heads not a multiple of 64, windows, the interpreter).

What Gluon fixes, set against the Triton kernel at 64 heads a program and eight warps:
- the scores: Triton lays the [64 heads, keys] product out on the eight warps along the heads, so both warp
  groups compute all of it; here each warp group takes its own half of the keys;
- the keys: the Triton kernel loads each block into registers, then stores it to shared memory; here the next
  block is copied straight into shared memory (cp.async) while the current one is used, and the products run
  asynchronously on the tensor cores;
The output [heads, L] is split by columns between the two warp groups, as in the Triton kernel. Gathered rows'
indices are loaded a block ahead of their copy. Decode deals the rows' key blocks to the SMs in equal runs
(`balanced_split`; a run may span two rows, the merge combines each row's slices); sparse prefill runs one
program per (query, 64 heads), and with picks in ascending order stops at the query's position. Shared memory:
the query block and BUFFERS blocks of keys, (64 + BUFFERS x BLOCK) x (L + R) x 2 bytes (225 KiB at DeepSeek's
widths, 64 keys a block, two buffers: one program an SM).
"""

from __future__ import annotations

import torch

try:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait
    HAVE_GLUON = True
except ImportError:  # no Triton, or one without Gluon
    HAVE_GLUON = False

ENABLED = True  # tests and benchmarks switch it off to time or check the Triton kernels alone
HEADS_PER_PROGRAM = 64  # one warp-group MMA's M
WARPS = 8  # two warp groups
# (keys a block, buffers of keys): 32-key blocks (three or four buffers) measured 1.6x slower at DeepSeek's shape
# (examples/bench/latent_kernel_variants-h100.csv).
CONFIGS = [(64, 2)]
# Decode grids: about this many programs an SM (one runs at a time: shared memory), splitting each sequence's keys.
PROGRAMS_PER_SM = (1, 2, 4)
SHARED_MEMORY_BYTES = 232448  # an H100's or H200's most per block (227 KiB)


def serves(q_cat: torch.Tensor, kv_lora_rank: int, window: int | None = None) -> bool:
    """Whether the Gluon kernel serves this call: enabled, a Hopper GPU (compute capability 9.x), a Triton with
    Gluon, no dispatch mode active (FlopCounterMode cannot see inside a kernel), bf16, heads a multiple of 64,
    power-of-two latent and RoPE widths that fit shared memory, and no window."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if not (ENABLED and HAVE_GLUON and q_cat.is_cuda and q_cat.dtype == torch.bfloat16 and window is None):
        return False
    if _get_current_dispatch_mode() is not None or torch.cuda.get_device_capability(q_cat.device)[0] != 9:
        return False
    heads, width = q_cat.size(-2), q_cat.size(-1)
    rope = width - kv_lora_rank
    powers = all(n >= 16 and n & (n - 1) == 0 for n in (kv_lora_rank, rope))
    block, buffers = CONFIGS[0]
    fits = (HEADS_PER_PROGRAM + buffers * block) * width * 2 <= SHARED_MEMORY_BYTES  # the query and key blocks
    return heads % HEADS_PER_PROGRAM == 0 and powers and fits


if HAVE_GLUON:
    @gluon.jit
    def _block_slots(idx_row, start, end, BLOCK: gl.constexpr, GATHER: gl.constexpr, layout: gl.constexpr):
        """Rows of keys start .. start + BLOCK: key j itself, or slot idx_row[j] (0 past `end`)."""
        j = start + gl.arange(0, BLOCK, layout=layout)
        if GATHER:
            return gl.load(idx_row + j, mask=j < end, other=0).to(gl.int32)  # int32 or int64 indices
        return j

    @gluon.jit
    def _copy_block(kv_ptr, slot, start, end, limit, lat_buf, rope_buf, L: gl.constexpr, R: gl.constexpr,
                    BLOCK: gl.constexpr, GATHER: gl.constexpr, load_layout: gl.constexpr):
        """Start copying keys start .. start + BLOCK (rows `slot` of kv_ptr, _block_slots') into (lat_buf [BLOCK,
        L], rope_buf [BLOCK, R]); rows that do not attend are written as zeros, not read."""
        j = start + gl.arange(0, BLOCK, layout=gl.SliceLayout(1, load_layout))
        live = j < end
        if GATHER:
            live = live & (slot <= limit)
        row = kv_ptr + slot.to(gl.int64)[:, None] * (L + R)
        lat = gl.arange(0, L, layout=gl.SliceLayout(0, load_layout))
        rope = gl.arange(0, R, layout=gl.SliceLayout(0, load_layout))
        async_copy.async_copy_global_to_shared(lat_buf, row + lat[None, :], mask=live[:, None])
        async_copy.async_copy_global_to_shared(rope_buf, row + L + rope[None, :], mask=live[:, None])
        async_copy.commit_group()

    @gluon.jit
    def _copy_query(q_ptr, q_lat, q_rope, hb, r, H: gl.constexpr, L: gl.constexpr, R: gl.constexpr,
                    load_layout: gl.constexpr):
        """Start copying query row r's heads hb * 64 .. (q_ptr [rows, H, L + R]) into (q_lat [64, L], q_rope [64,
        R]); the copies join the next commit group."""
        heads = hb * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, load_layout))
        q_row = q_ptr + (r.to(gl.int64) * H + heads)[:, None] * (L + R)
        lat = gl.arange(0, L, layout=gl.SliceLayout(0, load_layout))
        rope = gl.arange(0, R, layout=gl.SliceLayout(0, load_layout))
        async_copy.async_copy_global_to_shared(q_lat, q_row + lat[None, :])
        async_copy.async_copy_global_to_shared(q_rope, q_row + L + rope[None, :])

    # Eight warps: the scores [64 heads, BLOCK keys] and the output [64 heads, L] each split between the two warp
    # groups, along the keys and along the columns; rows copied 8 elements (16 bytes) a thread.
    @gluon.constexpr_function
    def _score_layout(block):
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, block // 2, 16])

    @gluon.constexpr_function
    def _out_layout(width):
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, width // 2, 16])

    @gluon.constexpr_function
    def _p_layout(width):
        return gl.DotOperandLayout(operand_index=0, parent=_out_layout(width), k_width=2)

    @gluon.constexpr_function
    def _load_layout():
        return gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8], warps_per_cta=[8, 1], order=[1, 0])

    @gluon.jit
    def _block_scores(q_lat, q_rope, lat_i, rope_i, acc, zero_scores, BUFFERS: gl.constexpr):
        """Wait for the block in (lat_i, rope_i) to land, then its scores [64, BLOCK] against the query block.
        Waiting for them also retires the previous block's P x latent (acc), so its buffer is free once both
        warp groups are past the barrier at the end."""
        async_copy.wait_group(BUFFERS - 2)  # this block has landed (this thread's part)
        gl.thread_barrier()  # ... every thread's part
        fence_async_shared()
        scores = warpgroup_mma(q_lat, lat_i.permute((1, 0)), zero_scores, use_acc=False, is_async=True)
        scores = warpgroup_mma(q_rope, rope_i.permute((1, 0)), scores, is_async=True)
        scores, acc = warpgroup_mma_wait(0, deps=[scores, acc])
        gl.thread_barrier()
        return scores, acc

    @gluon.jit
    def _block_update(scores, m, l, acc, lat_i, out_layout: gl.constexpr, p_layout: gl.constexpr):
        """The online softmax over one block's (masked) scores; P x latent left running on the tensor cores (the
        next block's score wait retires it). m in the scores' units: exp2 of log2(e) x (score - m) is one fused
        multiply-add a score."""
        LOG2E: gl.constexpr = 1.4426950408889634
        m_new = gl.maximum(m, gl.max(scores, axis=1))
        correction = gl.exp2((m - m_new) * LOG2E)
        p = gl.exp2(scores * LOG2E - (m_new * LOG2E)[:, None])
        l = l * correction + gl.sum(p, axis=1)
        acc = acc * gl.convert_layout(correction, gl.SliceLayout(1, out_layout))[:, None]
        acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_layout), lat_i, acc, is_async=True)
        acc = warpgroup_mma_wait(1, deps=[acc])
        return m_new, l, acc

    @gluon.jit
    def _attend(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope, hb,
                r, split, first, last, seq_rows, queries, limit_first, k_first, n_keys, splits, H: gl.constexpr,
                L: gl.constexpr, R: gl.constexpr, BLOCK: gl.constexpr, BUFFERS: gl.constexpr, GATHER: gl.constexpr,
                LIMIT_FROM_POS: gl.constexpr, DIRECT: gl.constexpr, ASCENDING: gl.constexpr):
        """Heads hb * 64 .. of query row r over its keys first .. last (clipped to the keys it has and, without
        GATHER, to its limit): written to out_ptr (DIRECT) or as slice `split` of its partial outputs."""
        BLOCK_H: gl.constexpr = 64
        score_layout: gl.constexpr = _score_layout(BLOCK)
        out_layout: gl.constexpr = _out_layout(L)
        p_layout: gl.constexpr = _p_layout(L)
        load_layout: gl.constexpr = _load_layout()
        slot_layout: gl.constexpr = gl.SliceLayout(1, load_layout)
        seq = r // queries
        if LIMIT_FROM_POS:
            limit = gl.load(pos_ptr).to(gl.int32)
        else:
            limit = limit_first + r % queries
        limit -= k_first  # as an offset from k_first, as the slots are
        if GATHER:
            end = gl.minimum(last, n_keys)
            if ASCENDING:  # distinct rows in ascending order: the j-th is at least j, so none past the limit attends
                end = gl.minimum(end, limit + 1)
        else:
            end = gl.minimum(gl.minimum(last, limit + 1), seq_rows)  # later keys: not read
        kv_ptr += (seq.to(gl.int64) * seq_rows + k_first) * (L + R)
        idx_row = idx_ptr + r.to(gl.int64) * n_keys

        # The query block (scaled by the softmax scale) copied into shared memory with the first key block; every
        # thread past the previous slice's products first (they read it).
        gl.thread_barrier()
        _copy_query(q_ptr, q_lat, q_rope, hb, r, H, L, R, load_layout)
        for i in gl.static_range(BUFFERS - 1):  # the first blocks start loading
            start = first + i * BLOCK
            _copy_block(kv_ptr, _block_slots(idx_row, start, end, BLOCK, GATHER, slot_layout), start, end, limit,
                        k_lat.index(i), k_rope.index(i), L, R, BLOCK, GATHER, load_layout)
        # The rows of the next block to copy, loaded a block ahead so their latency hides behind the products.
        next_slots = _block_slots(idx_row, first + (BUFFERS - 1) * BLOCK, end, BLOCK, GATHER, slot_layout)

        m = gl.full([BLOCK_H], -1e30, gl.float32, layout=gl.SliceLayout(1, score_layout))
        l = gl.zeros([BLOCK_H], gl.float32, layout=gl.SliceLayout(1, score_layout))
        acc = gl.zeros([BLOCK_H, L], gl.float32, layout=out_layout)
        zero_scores = gl.zeros([BLOCK_H, BLOCK], gl.float32, layout=score_layout)
        key_in_block = gl.arange(0, BLOCK, layout=gl.SliceLayout(0, score_layout))
        for i in range(gl.cdiv(end - first, BLOCK)):
            buf = i % BUFFERS
            j = first + i * BLOCK + key_in_block
            if GATHER:  # this block's slots for its mask, loaded while the products run
                live = (j < end) & (gl.load(idx_row + j, mask=j < end, other=0) <= limit)
            lat_i = k_lat.index(buf)
            scores, acc = _block_scores(q_lat, q_rope, lat_i, k_rope.index(buf), acc, zero_scores, BUFFERS)
            nxt = first + (i + BUFFERS - 1) * BLOCK
            _copy_block(kv_ptr, next_slots, nxt, end, limit, k_lat.index((i + BUFFERS - 1) % BUFFERS),
                        k_rope.index((i + BUFFERS - 1) % BUFFERS), L, R, BLOCK, GATHER, load_layout)  # past the end: no reads
            next_slots = _block_slots(idx_row, nxt + BLOCK, end, BLOCK, GATHER, slot_layout)
            if GATHER:
                scores = gl.where(live[None, :], scores, float("-inf"))
            elif first + (i + 1) * BLOCK > end:  # only the slice's last block has rows past its end
                scores = gl.where((j < end)[None, :], scores, float("-inf"))
            m, l, acc = _block_update(scores, m, l, acc, lat_i, out_layout, p_layout)
        acc = warpgroup_mma_wait(0, deps=[acc])
        async_copy.wait_group(0)

        if DIRECT:
            l = gl.convert_layout(l, gl.SliceLayout(1, out_layout))
            out_heads = hb * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, out_layout))
            cols = gl.arange(0, L, layout=gl.SliceLayout(0, out_layout))
            out = (r.to(gl.int64) * H + out_heads)[:, None] * L + cols[None, :]
            gl.store(out_ptr + out, (acc / l[:, None]).to(out_ptr.dtype.element_ty))
        else:
            _store_slice(acc_ptr, m_ptr, l_ptr, acc, m, l, hb, r, split, splits, H, L, out_layout)

    @gluon.jit
    def _store_slice(acc_ptr, m_ptr, l_ptr, acc, m, l, hb, r, split, splits, H: gl.constexpr, L: gl.constexpr,
                     out_layout: gl.constexpr):
        """Slice `split` of query row r's unnormalized output for heads hb * 64 ..: acc [64, L], its row maxima m
        and sums l, into acc_ptr [rows, splits, H, L], m_ptr and l_ptr [rows, splits, H] (the merge combines them)."""
        heads = hb * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, out_layout))
        cols = gl.arange(0, L, layout=gl.SliceLayout(0, out_layout))
        out = (r * splits + split) * H + heads
        gl.store(acc_ptr + out.to(gl.int64)[:, None] * L + cols[None, :], acc)
        gl.store(m_ptr + out, gl.convert_layout(m, gl.SliceLayout(1, out_layout)))
        gl.store(l_ptr + out, gl.convert_layout(l, gl.SliceLayout(1, out_layout)))

    @gluon.jit
    def _latent_kernel(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, seq_rows, queries,
                       limit_first, k_first, n_keys, keys_per_split, splits, blocks_per_program, rows,
                       H: gl.constexpr, L: gl.constexpr, R: gl.constexpr, BLOCK: gl.constexpr,
                       BUFFERS: gl.constexpr, GATHER: gl.constexpr, LIMIT_FROM_POS: gl.constexpr,
                       DIRECT: gl.constexpr, BALANCED: gl.constexpr, ASCENDING: gl.constexpr):
        # Row r is query r % queries of sequence r // queries, whose keys are rows k_first + ... of the
        # sequence's seq_rows; a key attends if its slot <= limit: the value at pos_ptr (LIMIT_FROM_POS, decode)
        # or limit_first + the query's index (prefill). DIRECT: one slice a row; the normalized output, in
        # out_ptr's dtype, to out_ptr [rows, H, L]; else unnormalized slices (acc, m, l) to merge.
        # Grid (head blocks, rows, splits): one slice of keys_per_split keys a program. BALANCED, grid (head
        # blocks, programs): the rows' key blocks laid end to end, blocks_per_program consecutive ones a program (a
        # slice of one row or more); a row's slices are numbered from the program holding its first block. The
        # head blocks of a slice are neighbouring programs: they run together and read its rows from HBM once.
        BLOCK_H: gl.constexpr = 64
        tile: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        q_lat = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_H, L], tile)
        q_rope = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_H, R], tile)
        k_lat = gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, BLOCK, L], tile)
        k_rope = gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, BLOCK, R], tile)
        hb = gl.program_id(0)
        if BALANCED:
            n_blocks = gl.cdiv(n_keys, BLOCK)
            p = gl.program_id(1)
            g = p * blocks_per_program
            g_end = gl.minimum(g + blocks_per_program, rows * n_blocks)
            while g < g_end:
                r = g // n_blocks
                row_end = gl.minimum(g_end, (r + 1) * n_blocks)
                _attend(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat,
                        k_rope, hb, r, p - r * n_blocks // blocks_per_program, (g - r * n_blocks) * BLOCK,
                        (row_end - r * n_blocks) * BLOCK, seq_rows, queries, limit_first, k_first, n_keys, splits,
                        H, L, R, BLOCK, BUFFERS, GATHER, LIMIT_FROM_POS, DIRECT, ASCENDING)
                g = row_end
        else:
            split = gl.program_id(2)
            _attend(q_ptr, kv_ptr, idx_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr, out_ptr, q_lat, q_rope, k_lat, k_rope,
                    hb, gl.program_id(1), split, split * keys_per_split, (split + 1) * keys_per_split, seq_rows,
                    queries, limit_first, k_first, n_keys, splits, H, L, R, BLOCK, BUFFERS, GATHER, LIMIT_FROM_POS,
                    DIRECT, ASCENDING)


def row_slices(row: int, n_blocks: int, per: int) -> int:
    """Slices of a row in a BALANCED grid: the programs, each taking `per` consecutive blocks of the rows' n_blocks
    each laid end to end, that hold some of row `row`'s blocks (the merge kernel counts them the same way)."""
    return ((row + 1) * n_blocks - 1) // per - row * n_blocks // per + 1


def balanced_split(rows: int, head_blocks: int, n_keys: int, block: int, device: torch.device, per_sm: int,
                   min_keys: int) -> tuple[int, int, int]:
    """(programs a head block, blocks a program, most slices a row has) for BALANCED grids: the key blocks of
    `rows` rows of n_keys keys laid end to end and dealt in equal runs to about per_sm programs an SM (so every SM
    gets the same work, where whole slices per row would leave some idle), runs no shorter than min_keys keys."""
    from .triton_decode import sm_count

    n_blocks = -(-n_keys // block)
    total = rows * n_blocks
    per = max(-(-total // max(1, per_sm * sm_count(device) // head_blocks)), -(-min_keys // block))
    return -(-total // per), per, max(row_slices(r, n_blocks, per) for r in range(rows))


def _launch(q_cat, kv, idx, pos, seq_rows, queries, limit_first, k_first, n_keys, splits, keys_per_split, L, config,
            out=None, balanced=None, ascending=False, kernel=None, **options):
    """One launch over rows = q_cat.size(0) query rows; returns (acc, m, l) to merge, or fills `out`.
    balanced: a BALANCED grid, balanced_split's (programs a head block, blocks a program, most slices a row), the
    last as `splits`. kernel: another kernel with _latent_kernel's arguments (examples/latent_seesaw.py), launched
    with `options` (its further constexprs and launch options) instead of num_warps=WARPS."""
    rows, H, W = q_cat.shape
    block, buffers = config
    direct = out is not None
    programs, blocks_per_program, _ = balanced or (0, 0, 0)
    acc = m = l = None
    if not direct:
        acc = torch.empty(rows, splits, H, L, device=q_cat.device, dtype=torch.float32)
        m = torch.empty(rows, splits, H, device=q_cat.device, dtype=torch.float32)
        l = torch.empty_like(m)
    unused = q_cat  # for the pointers this launch does not read
    head_blocks = H // HEADS_PER_PROGRAM
    grid = (head_blocks, programs) if balanced else (head_blocks, rows, splits)
    (kernel or _latent_kernel)[grid](
        q_cat, kv, idx if idx is not None else unused, pos if pos is not None else unused,
        acc if not direct else unused, m if not direct else unused, l if not direct else unused,
        out if direct else unused, seq_rows, queries, limit_first, k_first, n_keys, keys_per_split, splits,
        blocks_per_program, rows, H=H, L=L, R=W - L, BLOCK=block, BUFFERS=buffers, GATHER=idx is not None,
        LIMIT_FROM_POS=pos is not None, DIRECT=direct, BALANCED=balanced is not None, ASCENDING=ascending,
        **(options or {"num_warps": WARPS}))
    return acc, m, l


def decode(q_cat: torch.Tensor, kv: torch.Tensor, input_pos: torch.Tensor, kv_lora_rank: int,
           chosen: torch.Tensor | None, config: tuple[int, int, int, int]) -> torch.Tensor:
    """triton_decode.mla_decode's contract and result (`serves` true); config: one of CONFIGS, programs an SM
    (one of PROGRAMS_PER_SM) and the fewest keys a program. A BALANCED grid (balanced_split), merged."""
    from . import triton_decode as td

    B, H, W = q_cat.shape
    slots = kv.size(1)
    n_keys = chosen.size(1) if chosen is not None else slots
    block, buffers, per_sm, min_keys = config
    split = balanced_split(B, H // HEADS_PER_PROGRAM, n_keys, block, q_cat.device, per_sm, min_keys)
    acc, m, l = _launch(q_cat, kv, chosen, input_pos, slots, 1, 0, 0, n_keys, split[2], 0, kv_lora_rank,
                        (block, buffers), balanced=split)
    return td._merge(acc, m, l, q_cat.dtype, (split[1], triton.cdiv(n_keys, block)))


def sparse_prefill(q_cat: torch.Tensor, latent: torch.Tensor, top: torch.Tensor, q_start: int, k_first: int,
                   kv_lora_rank: int, out: torch.Tensor, config: tuple = CONFIGS[0],
                   ascending: bool = False) -> torch.Tensor:
    """triton_dsa.sparse_latent_attention's contract and result without a window (`serves` true), into out [B,
    C, H, L]: each query over its K selected rows, one program per query and 64 heads, normalized in the kernel."""
    B, C, H, W = q_cat.shape
    T, K = latent.size(1), top.size(-1)
    _launch(q_cat.reshape(B * C, H, W), latent, top.reshape(B * C, K), None, T, C, q_start, k_first, K, 1,
            triton.cdiv(K, config[0]) * config[0], kv_lora_rank, config, out=out.view(B * C, H, -1),
            ascending=ascending)
    return out
