"""Optional Triton kernels for decode (used on CUDA tensors when Triton is installed): TPA's factorized
attention, and DSA's lightning indexer over its FP8 keys.

TPA:
Plain PyTorch contracts the query with the cached factors through intermediates of h x R values per
cached token (q . B_K per rank, its product with A_K, the probabilities times A_V), each written to and
read back from memory: more bytes than the factor cache itself. This kernel streams A_K, B_K, A_V, B_V
once, in split-KV flash-decoding style: each program takes one sequence and one slice of the cache, keeps
every head's running max, sum and output in registers, and a few small PyTorch ops merge the slices.
DSA: the PyTorch path dequantizes every FP8 indexer key to the compute dtype and writes each indexer head's
scores (index_n_heads values per cached token) before weighting them; the kernel reads each FP8 key and
its scales once and writes one fp32 score per token.
Both are checked against the layers' PyTorch paths in tests/test_models.py (GPU, or Triton's interpreter).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU CI has no Triton; TPALayer then uses its PyTorch path
    triton = None

HAVE_TRITON = triton is not None
BLOCK_S = 32  # cached tokens per inner step of the TPA kernel
INDEX_BLOCK = 64  # cached tokens per program of the DSA indexer kernel


ENABLED = True  # False: every layer takes its PyTorch path (for comparisons)


def enabled(x: torch.Tensor) -> bool:
    """Whether the kernel serves this call: enabled, Triton present, the tensors on a GPU, and no dispatch mode
    (FlopCounterMode, tracing) active, which would not see inside a Triton kernel."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return ENABLED and HAVE_TRITON and x.is_cuda and _get_current_dispatch_mode() is None


if HAVE_TRITON:
    @triton.jit
    def _tpa_decode_kernel(q_ptr, ak_ptr, bk_ptr, av_ptr, bv_ptr, pos_ptr, acc_ptr, m_ptr, l_ptr,
                           slots, keys_per_split, splits,
                           H: tl.constexpr, D: tl.constexpr, RK: tl.constexpr, RV: tl.constexpr,
                           H_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        split = tl.program_id(1)
        heads = tl.arange(0, H_PAD)
        dims = tl.arange(0, D_PAD)
        head_ok = heads < H
        dim_ok = dims < D
        pos = tl.load(pos_ptr)
        q = tl.load(q_ptr + b * H * D + heads[:, None] * D + dims[None, :], mask=head_ok[:, None] & dim_ok[None, :],
                    other=0.0)  # [H_PAD, D_PAD], already scaled by softmax scale / R_K
        m = tl.full([H_PAD], -1e30, tl.float32)
        l = tl.zeros([H_PAD], tl.float32)
        acc = tl.zeros([H_PAD, D_PAD], tl.float32)
        first = split * keys_per_split
        for start in range(first, first + keys_per_split, BLOCK):
            s = start + tl.arange(0, BLOCK)
            live = (s < slots) & (s <= pos)
            scores = tl.zeros([H_PAD, BLOCK], tl.float32)
            for r in tl.static_range(RK):
                # B_K[s, r, :] as [D_PAD, BLOCK]; A_K[s, r, :] as [H_PAD, BLOCK].
                b_k = tl.load(bk_ptr + ((b * slots + s[None, :]) * RK + r) * D + dims[:, None],
                              mask=live[None, :] & dim_ok[:, None], other=0.0)
                a_k = tl.load(ak_ptr + ((b * slots + s[None, :]) * RK + r) * H + heads[:, None],
                              mask=live[None, :] & head_ok[:, None], other=0.0)
                scores += a_k.to(tl.float32) * tl.dot(q, b_k)
            scores = tl.where(live[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            correction = tl.exp(m - m_new)
            l = l * correction + tl.sum(p, axis=1)
            acc = acc * correction[:, None]
            m = m_new
            for r in tl.static_range(RV):
                a_v = tl.load(av_ptr + ((b * slots + s[None, :]) * RV + r) * H + heads[:, None],
                              mask=live[None, :] & head_ok[:, None], other=0.0)
                b_v = tl.load(bv_ptr + ((b * slots + s[:, None]) * RV + r) * D + dims[None, :],
                              mask=live[:, None] & dim_ok[None, :], other=0.0)
                acc += tl.dot((p * a_v.to(tl.float32)).to(b_v.dtype), b_v)
        out = (b * splits + split) * H_PAD
        tl.store(acc_ptr + (out + heads[:, None]) * D_PAD + dims[None, :], acc)
        tl.store(m_ptr + out + heads, m)
        tl.store(l_ptr + out + heads, l)


    @triton.jit
    def _dsa_index_kernel(q_ptr, w_ptr, k_ptr, scale_ptr, out_ptr, slots,
                          N: tl.constexpr, D: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr,
                          GROUP_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        heads = tl.arange(0, N_PAD)
        head_ok = heads < N
        key_ok = s < slots
        acc = tl.zeros([N_PAD, BLOCK], tl.float32)
        for g in tl.static_range(GROUPS):
            dims = g * GROUP + tl.arange(0, GROUP_PAD)
            dim_ok = (dims < D) & (dims < (g + 1) * GROUP)
            q = tl.load(q_ptr + (b * N + heads[:, None]) * D + dims[None, :], mask=head_ok[:, None] & dim_ok[None, :],
                        other=0.0)
            k = tl.load(k_ptr + (b * slots + s[None, :]) * D + dims[:, None], mask=key_ok[None, :] & dim_ok[:, None],
                        other=0.0).to(q.dtype)
            scale = tl.load(scale_ptr + (b * slots + s) * GROUPS + g, mask=key_ok, other=0.0)
            acc += tl.dot(q, k) * scale[None, :]
        w = tl.load(w_ptr + b * N + heads, mask=head_ok, other=0.0).to(tl.float32)
        score = tl.sum(tl.maximum(acc, 0.0) * w[:, None], axis=0)
        tl.store(out_ptr + b * slots + s, score, mask=key_ok)


def dsa_index_scores(q: torch.Tensor, weights: torch.Tensor, k_fp8: torch.Tensor, scale: torch.Tensor,
                     group: int) -> torch.Tensor:
    """sum_j weights[b, j] relu(q[b, j] . dequant(k[b, s])) -> fp32 [B, slots], for every slot (the caller masks).

    q [B, n, d_i], weights [B, n], k_fp8 [B, slots, d_i] (float8_e4m3fn), scale [B, slots, groups] fp32 with
    one scale per `group` elements; all contiguous.
    """
    B, N, D = q.shape
    slots, groups = k_fp8.size(1), scale.size(-1)
    out = torch.empty(B, slots, device=q.device, dtype=torch.float32)
    group_pad = max(16, triton.next_power_of_2(min(group, D)))
    _dsa_index_kernel[(B, triton.cdiv(slots, INDEX_BLOCK))](
        q.contiguous(), weights.contiguous(), k_fp8, scale, out, slots, N=N, D=D, GROUPS=groups, GROUP=group,
        GROUP_PAD=group_pad, N_PAD=max(16, triton.next_power_of_2(N)), BLOCK=INDEX_BLOCK)
    return out


def _splits(batch: int, slots: int, device: torch.device) -> int:
    """Cache slices per sequence: enough programs to fill the GPU twice over, at least BLOCK_S keys each."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(slots, BLOCK_S), triton.cdiv(2 * sms, batch)))


def tpa_decode(q: torch.Tensor, a_k: torch.Tensor, b_k: torch.Tensor, a_v: torch.Tensor, b_v: torch.Tensor,
               input_pos: torch.Tensor) -> torch.Tensor:
    """sum over live slots s of softmax_s(sum_r A_K[s,r,h] (q[h] . B_K[s,r])) sum_r A_V[s,r,h] B_V[s,r] -> [B, h, d].

    q [B, h, d] carries the softmax scale and 1/R_K; the caller applies 1/R_V. Caches [B, slots, R, h|d],
    contiguous. Static shapes and no host reads: capturable in a CUDA graph.
    """
    B, H, D = q.shape
    slots, r_k, r_v = a_k.size(1), a_k.size(2), a_v.size(2)
    h_pad, d_pad = max(16, triton.next_power_of_2(H)), max(16, triton.next_power_of_2(D))
    splits = _splits(B, slots, q.device)
    keys_per_split = triton.cdiv(triton.cdiv(slots, splits), BLOCK_S) * BLOCK_S
    splits = triton.cdiv(slots, keys_per_split)
    acc = torch.empty(B, splits, h_pad, d_pad, device=q.device, dtype=torch.float32)
    m = torch.empty(B, splits, h_pad, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    _tpa_decode_kernel[(B, splits)](q.contiguous(), a_k, b_k, a_v, b_v, input_pos, acc, m, l, slots, keys_per_split,
                                    splits, H=H, D=D, RK=r_k, RV=r_v, H_PAD=h_pad, D_PAD=d_pad, BLOCK=BLOCK_S)
    # Merge the slices: rescale each to the global max, then normalise.
    weight = torch.exp(m - m.amax(dim=1, keepdim=True))  # [B, splits, H_PAD]
    out = (acc * weight[..., None]).sum(1) / (l * weight).sum(1)[..., None]
    return out[:, :H, :D].to(q.dtype)
