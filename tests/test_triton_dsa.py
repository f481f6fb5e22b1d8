"""DSA prefill kernels (kvplan.models.triton_dsa) against the PyTorch path of kvplan.models.dsa, on a CUDA GPU
or on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set before the import); skipped without Triton."""

from dataclasses import replace

import pytest
import torch

from kvplan.models import build
from kvplan.models.common import band_mask
from kvplan.models.mla import latent_attention

from test_models import _DSA, tiny
from test_triton_decode import _close, _dtypes, _kernel_device

# (prompt, first query, last query + 1, window): the first chunk, a later chunk, a window that starts inside
# the chunk's span, a window shorter than a key block.
SPANS = [(150, 0, 40, None), (150, 64, 150, None), (150, 90, 130, 50), (150, 100, 150, 9)]


@pytest.mark.parametrize("index_head_dim", [16, 128, 200])
def test_index_scores_equal_the_pytorch_path(index_head_dim):
    from kvplan.models import triton_dsa

    device = _kernel_device()
    n_heads = 16
    desc = tiny(replace(_DSA, index_n_heads=n_heads, index_head_dim=index_head_dim))
    for T, start, end, window in SPANS:
        first = max(0, start - window + 1) if window else 0
        for dtype, _ in _dtypes(device):
            layer = build(desc, max_batch=2, max_context=T, dtype=dtype, device=device).layers[0].attention
            g = torch.Generator(device=device).manual_seed(start)
            k_fp8, k_scale = layer._quantize(torch.randn(2, T, index_head_dim, device=device, dtype=dtype, generator=g))
            q = torch.randn(2, T, n_heads, index_head_dim, device=device, dtype=dtype, generator=g)
            weights = torch.randn(2, T, n_heads, device=device, dtype=dtype, generator=g)
            q_fp8, q_scale = layer._quantize(q[:, start:end])
            expected = layer._index_scores(layer._dequantize(q_fp8, q_scale, dtype), weights[:, start:end],
                                           layer._dequantize(k_fp8, k_scale, dtype)[:, first:end])
            positions = torch.arange(T, device=device)
            allowed = band_mask(positions[start:end], positions[first:end], window)
            got = triton_dsa.index_scores(q_fp8, q_scale, weights[:, start:end].contiguous(), k_fp8, k_scale,
                                          layer.group, start, first, window)
            assert torch.equal(torch.isinf(got), ~allowed.expand_as(got))  # every score written, -inf hidden
            tol = 1e-4 if dtype == torch.float32 and device == "cpu" else 3e-2
            _close(got[allowed.expand_as(got)], expected[allowed.expand_as(expected)], tol)


@pytest.mark.parametrize("heads, window", [(4, None), (20, None), (4, 7)])
def test_sparse_attention_equals_attention_over_gathered_rows(heads, window):
    from kvplan.models import triton_dsa

    device = _kernel_device()
    B, T, L, R, K, start, end = 2, 90, 24, 8, 11, 40, 70
    first = max(0, start - window + 1) if window else 0
    for dtype, tol in _dtypes(device):
        g = torch.Generator(device=device).manual_seed(heads)
        latent = torch.randn(B, T, L + R, device=device, dtype=dtype, generator=g)
        q_cat = torch.randn(B, end - start, heads, L + R, device=device, dtype=dtype, generator=g) * 0.3
        # Distinct keys per query, some after the query or outside its window (must be skipped).
        top = torch.rand(B, end - start, end - first, device=device, generator=g).argsort(-1)[..., :K]
        positions = torch.arange(T, device=device)
        allowed = band_mask(positions[start:end], positions[first:end], window)
        top[..., 0] = start - first + torch.arange(end - start, device=device)  # each query sees itself
        chosen = latent[:, first:end][torch.arange(B, device=device)[:, None, None], top]
        chosen_allowed = allowed.expand(B, -1, -1).gather(-1, top)
        expected = latent_attention(q_cat, chosen, L, chosen_allowed.unsqueeze(-2))
        got = triton_dsa.sparse_latent_attention(q_cat, latent, top, start, first, L, window)
        _close(got, expected, tol)


@pytest.mark.parametrize("windows", [(), (6, 6)])
def test_layer_prefill_with_kernels_equals_without(windows, monkeypatch):
    """A whole DSA prefill: with every visible key selected (index_topk >= the chunks' spans) the choice cannot
    differ; under the interpreter, in fp32, a small index_topk selects the same keys too."""
    from kvplan.models import dsa as dsa_module, triton_decode

    device = _kernel_device()
    monkeypatch.setattr(dsa_module, "DSA_QUERY_CHUNK", 8)
    T = 30
    for topk in ([T] if device == "cuda" else [T, 5]):
        desc = tiny(replace(_DSA, index_topk=topk), windows=windows)
        toks = torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(2)).to(device)
        outputs = {}
        for on in (True, False):
            monkeypatch.setattr(triton_decode, "ENABLED", on)
            net = build(desc, max_batch=2, max_context=T, dtype=torch.float32, device=device, seed=5)
            outputs[on] = net.forward(toks)
        _close(outputs[True], outputs[False], 2e-2 if device == "cuda" else 1e-4)
