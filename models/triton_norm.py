"""RMSNorm in one Triton kernel (used on CUDA tensors when Triton is installed).

kvplan.models.common.RMSNorm in PyTorch runs six kernels (the fp32 norm, its division, + eps, the reciprocal,
its cast, x times it, times the weight). In a decode step (where RMSNorm takes this kernel) each works on a few
rows and costs a launch's worth of GPU time, not its bytes: on an H100, DeepSeek-V3.2's 3-layer decode at batch
16 spends about 0.1 ms of 3.3 in those reductions alone. Here one program reads a row once and writes its output
once, with the PyTorch path's roundings (the reciprocal cast to x's dtype, x times it rounded, then times the
weight rounded), so the two agree up to the order of the fp32 sum (tests/test_triton_norm.py, on a GPU or
Triton's interpreter).
"""

from __future__ import annotations

import math

import torch

from .triton_decode import HAVE_TRITON, enabled

if HAVE_TRITON:
    import triton
    import triton.language as tl

MAX_WIDTH = 16384  # widest row one program holds in registers; wider rows take the PyTorch path


if HAVE_TRITON:
    from .triton_decode import _rms_row

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, row_stride, eps, sqrt_width, D: tl.constexpr, D_PAD: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, D_PAD)
        ok = cols < D
        x = tl.load(x_ptr + row * row_stride + cols, mask=ok, other=0.0)
        tl.store(out_ptr + row * D + cols, _rms_row(x, w_ptr, cols, ok, eps, sqrt_width).to(x.dtype), mask=ok)


def _row_stride(x: torch.Tensor) -> int | None:
    """Elements between consecutive rows of x [..., D] taken as [rows, D] (its leading dimensions one evenly
    strided run, as a slice of a wider tensor's rows is), or None; each row contiguous."""
    if x.dim() == 0 or x.stride(-1) != 1:
        return None
    # A size-1 dimension never steps, whatever its stride (x[:, -1:] of a prompt's hidden states: a row a sequence).
    stepping = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]
    if not stepping:
        return x.size(-1)
    lead, strides = [size for size, _ in stepping], [stride for _, stride in stepping]
    if any(strides[i] != strides[i + 1] * lead[i + 1] for i in range(len(lead) - 1)):
        return None
    return strides[-1]


def serves(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether RMSNorm runs the kernel: a decode step's input (x [..., 1, D]: one token a sequence; in a prefill
    PyTorch's kernels each stream the whole prompt, which is what the estimate's elementwise bytes count), the
    decode kernels' conditions, rows no wider than MAX_WIDTH laid out as _row_stride reads them, and a contiguous
    weight in x's dtype."""
    return (x.dim() >= 2 and x.size(-2) == 1 and enabled(x) and 0 < x.size(-1) <= MAX_WIDTH
            and _row_stride(x) is not None and weight.dtype == x.dtype and weight.is_contiguous())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / (sqrt(mean(x^2)) + eps) * weight over the last dimension, as kvplan.models.common.RMSNorm computes it,
    into a new contiguous tensor (x may be a slice of wider rows: serves says which layouts)."""
    D = x.size(-1)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    rows = x.numel() // D
    if rows:
        D_PAD = triton.next_power_of_2(D)
        _rms_norm_kernel[(rows,)](x, weight, out, _row_stride(x), eps, math.sqrt(D), D=D, D_PAD=D_PAD,
                                  num_warps=min(16, max(1, D_PAD // 1024)))
    return out
