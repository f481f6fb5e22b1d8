"""The one-kernel RMSNorm (kvplan.models.triton_norm) against RMSNorm's PyTorch path, on a GPU or under
TRITON_INTERPRET=1; the kernel serves only where the layer would call it."""

import pytest
import torch
from test_triton_decode import _dtypes, _kernel_device


@pytest.mark.parametrize("shape, wider", [((16, 1, 7168), 0), ((3, 5, 1536), 0), ((2, 100), 0), ((1, 1, 512), 0),
                                          ((3, 2, 512), 64)])
def test_rms_norm_kernel_equals_the_pytorch_path(shape, wider, monkeypatch):
    """wider: x is the first shape[-1] columns of rows that many elements wider (MLA's latent beside its RoPE
    key)."""
    from kvplan.models import common, triton_norm

    device = _kernel_device()
    for dtype, _ in _dtypes(device) + ([(torch.bfloat16, None)] if device == "cpu" else []):
        g = torch.Generator(device=device).manual_seed(shape[-1])
        norm = common.RMSNorm(shape[-1], device=device, dtype=dtype)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(shape[-1], device=device, generator=g) + 0.5)
        x = (torch.randn(shape[:-1] + (shape[-1] + wider,), device=device, generator=g) * 3).to(dtype)[..., :shape[-1]]
        assert x.is_contiguous() == (wider == 0)
        monkeypatch.setattr(triton_norm, "serves", lambda x, w: False)
        with torch.no_grad():
            expected = norm(x)
        monkeypatch.undo()
        got = triton_norm.rms_norm(x, norm.weight, norm.eps)
        assert got.dtype == dtype and got.shape == x.shape
        # The fp32 sums may add in another order, which can move the scale by one rounding step; the output's
        # two products then round from it: a few rounding steps of the output apart at most.
        steps = 4 * torch.finfo(dtype).eps * expected.abs().float()
        assert ((got.float() - expected.float()).abs() <= steps).all()


def test_rms_norm_kernel_serves_decode_steps_whose_rows_it_reads():
    from kvplan.models import triton_norm

    device = _kernel_device()
    if device == "cpu":
        pytest.skip("the kernel serves CUDA tensors only")
    w = torch.ones(64, device=device)
    assert triton_norm.serves(torch.randn(4, 1, 64, device=device), w)  # a decode step
    assert not triton_norm.serves(torch.randn(4, 3, 64, device=device), w)  # a prefill: PyTorch's kernels
    assert triton_norm.serves(torch.randn(3, 1, 80, device=device)[..., :64], w)  # rows evenly strided
    assert not triton_norm.serves(torch.randn(3, 5, 1, 64, device=device)[:, :4], w)  # rows not evenly strided
    last = torch.randn(4, 7, 64, device=device)[:, -1:]  # a prompt's last positions: rows 7 x 64 apart
    assert triton_norm.serves(last, w)
    assert torch.equal(triton_norm.rms_norm(last, w, 1e-6), triton_norm.rms_norm(last.contiguous(), w, 1e-6))
    assert not triton_norm.serves(torch.randn(64, 1, 4, device=device).transpose(0, 2), w)
    assert not triton_norm.serves(torch.randn(4, 1, 64, device=device, dtype=torch.bfloat16), w)
    assert not triton_norm.serves(torch.randn(4, 1, triton_norm.MAX_WIDTH + 1, device=device),
                                  torch.ones(triton_norm.MAX_WIDTH + 1, device=device))
