"""DSA prefill kernels (kvplan.models.triton_dsa) against the PyTorch path of kvplan.models.dsa, on a CUDA GPU
or on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set before the import); skipped without Triton."""

from dataclasses import replace

import pytest
import torch

from kvplan.models import build
from kvplan.models.common import band_mask
from kvplan.models.mla import latent_attention
from kvplan.presets import get_preset

from test_models import _DSA, tiny
from test_triton_decode import _close, _dtypes, _kernel_device

@pytest.fixture(autouse=True)
def _one_config(monkeypatch):
    """The first launch config of each kernel (as the interpreter runs): on a GPU, no tuning over the others
    (each would compile for every shape here); kvplan.profilers.bench_prefill tunes over them all."""
    try:
        from kvplan.models import triton_dsa
    except ImportError:
        return
    monkeypatch.setattr(triton_dsa, "INDEX_CONFIGS", triton_dsa.INDEX_CONFIGS[:1])
    monkeypatch.setattr(triton_dsa, "SPARSE_CONFIGS", triton_dsa.SPARSE_CONFIGS[:1])
    monkeypatch.setattr(triton_dsa, "TOPK_CONFIGS", triton_dsa.TOPK_CONFIGS[:1])


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


@pytest.mark.parametrize("index_head_dim", [16, 128, 200])
def test_quantize_equals_the_pytorch_path(index_head_dim):
    """FP8 values and scales per group of 128 (a shorter last group at 200) bit for bit as DSALayer._quantize."""
    from kvplan.models import triton_dsa

    device = _kernel_device()
    desc = tiny(replace(_DSA, index_head_dim=index_head_dim))
    for dtype, _ in _dtypes(device):
        layer = build(desc, max_batch=1, max_context=8, dtype=dtype, device=device).layers[0].attention
        x = torch.randn(2, 37, 5, index_head_dim, device=device, dtype=dtype,
                        generator=torch.Generator(device=device).manual_seed(index_head_dim)) * 3
        x[0, 0, 0] = 0.0  # an all-zero group: the smallest scale
        got, expected = triton_dsa.quantize(x, layer.group), layer._quantize(x)
        assert got[0].dtype == torch.float8_e4m3fn and got[1].shape == expected[1].shape
        assert torch.equal(got[0].float(), expected[0].float())  # equal values (a zero's sign may differ)
        assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize("rows_first", [False, True])
@pytest.mark.parametrize("heads, window", [(4, None), (20, None), (4, 7)])
def test_sparse_attention_equals_attention_over_gathered_rows(heads, window, rows_first):
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
        config = (32, 32, 4, 2, rows_first)
        got = triton_dsa.sparse_latent_attention(q_cat, latent, top, start, first, L, window, config)
        _close(got, expected, tol)


@pytest.mark.parametrize("config", [(32, 32, 4, 2, True), (64, 16, 8, 2, False)])
def test_sparse_attention_at_deepseek_width(config):
    """DeepSeek-V3.2's shape: 128 heads (in head blocks of 32 or 64), latent 512, RoPE key 64."""
    from kvplan.models import triton_dsa

    device = _kernel_device()
    mla = get_preset("deepseek-v3.2-exp").attention.mla
    B, T, H, L, R, K, start, end = 1, 40, mla.n_heads, mla.kv_lora_rank, mla.qk_rope_head_dim, 11, 30, 34
    for dtype, tol in _dtypes(device):
        g = torch.Generator(device=device).manual_seed(H)
        latent = torch.randn(B, T, L + R, device=device, dtype=dtype, generator=g)
        q_cat = torch.randn(B, end - start, H, L + R, device=device, dtype=dtype, generator=g) * 0.05
        top = torch.rand(B, end - start, end, device=device, generator=g).argsort(-1)[..., :K]
        top[..., 0] = start + torch.arange(end - start, device=device)  # each query sees itself
        allowed = band_mask(torch.arange(start, end, device=device), torch.arange(end, device=device), None)
        chosen = latent[torch.arange(B, device=device)[:, None, None], top]
        expected = latent_attention(q_cat, chosen, L, allowed.expand(B, -1, -1).gather(-1, top).unsqueeze(-2))
        got = triton_dsa.sparse_latent_attention(q_cat, latent, top, start, 0, L, None, config)
        _close(got, expected, tol)


def test_sparse_attention_over_ascending_picks_skips_those_past_the_query():
    """Picks in ascending order (select_topk's) from the prompt's first queries, which see fewer keys than they
    pick: with `ascending` the kernel stops at the query's position; the result is attention over the visible picks."""
    from kvplan.models import triton_dsa

    device = _kernel_device()
    B, T, heads, L, R, K, end = 2, 40, 4, 24, 8, 11, 30
    for dtype, tol in _dtypes(device):
        g = torch.Generator(device=device).manual_seed(K)
        latent = torch.randn(B, T, L + R, device=device, dtype=dtype, generator=g)
        q_cat = torch.randn(B, end, heads, L + R, device=device, dtype=dtype, generator=g) * 0.3
        scores = torch.rand(B, end, end, device=device, generator=g)
        scores.diagonal(dim1=-2, dim2=-1).fill_(2.0)  # each query picks itself, and K - 1 other distinct keys
        top = scores.argsort(-1, descending=True)[..., :K].sort(-1).values
        allowed = band_mask(torch.arange(end, device=device), torch.arange(end, device=device), None)
        chosen = latent[torch.arange(B, device=device)[:, None, None], top]
        expected = latent_attention(q_cat, chosen, L, allowed.expand(B, -1, -1).gather(-1, top).unsqueeze(-2))
        for config in (None, (32, 32, 4, 2, True)):
            got = triton_dsa.sparse_latent_attention(q_cat, latent, top, 0, 0, L, None, config, ascending=True)
            _close(got, expected, tol)


# (attention, windows, layers, batch, prompt, dtype on a GPU): test_models' tiny DSA without and with windows, and
# one layer of DeepSeek-V3.2-Exp's attention (128 heads, latent 512, RoPE key 64, indexer 64 heads x 128) on a
# narrow residual stream, in bf16 as served: in fp32 the sparse kernel's first launch config needs 280 KiB of
# shared memory at latent 512 (an H100 has 227 KiB), and the tuner, which skips such configs, is off here.
LAYER_CASES = {"tiny": (_DSA, (), 2, 2, 30, torch.float32), "tiny-window": (_DSA, (6, 6), 2, 2, 30, torch.float32),
               "deepseek-v3.2-exp": (get_preset("deepseek-v3.2-exp").attention, (), 1, 1, 20, torch.bfloat16)}


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_prefill_with_kernels_equals_without(case, monkeypatch):
    """A whole DSA prefill: with every visible key selected (index_topk >= the chunks' spans) the choice cannot
    differ; under the interpreter, in fp32, a small index_topk selects the same keys too."""
    from kvplan.models import dsa as dsa_module, triton_decode, triton_dsa

    device = _kernel_device()
    monkeypatch.setattr(dsa_module, "DSA_QUERY_CHUNK", 8)
    attention, windows, layers, batch, T, gpu_dtype = LAYER_CASES[case]
    gpu_tol = 2e-2 if gpu_dtype == torch.float32 else 5e-2
    dtype, tol = (gpu_dtype, gpu_tol) if device == "cuda" else (torch.float32, 1e-4)
    for topk in ([T] if device == "cuda" else [T, 5]):
        desc = tiny(replace(attention, index_topk=topk), windows=windows, layers=layers)
        toks = torch.randint(0, 61, (batch, T), generator=torch.Generator().manual_seed(2)).to(device)
        outputs = {}
        for on in (True, False):
            monkeypatch.setattr(triton_decode, "ENABLED", on)
            monkeypatch.setattr(triton_dsa, "serves", lambda x, on=on: on)  # the interpreter's CPU tensors too
            net = build(desc, max_batch=batch, max_context=T, dtype=dtype, device=device, seed=5)
            outputs[on] = net.forward(toks)
            del net
        _close(outputs[True], outputs[False], tol)


# (rows, scores per row, k): k-th largest group maximum as the bound with candidates fitting their slots, and
# rows whose candidates overflow them (many equal scores) taking the whole-row path; one group per score.
TOPK_SHAPES = [(3, 150, 5), (2, 40, 7), (2, 300, 64), (2, 1000, 16), (1, 9000, 32)]


@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize("rows, keys, k", TOPK_SHAPES)
def test_select_topk_picks_the_values_torch_topk_picks(rows, keys, k, block):
    from kvplan.models import triton_dsa

    device = _kernel_device()
    g = torch.Generator(device=device).manual_seed(keys)
    scores = torch.randn(rows, keys, device=device, generator=g)
    scores[0, ::3] = float("-inf")  # keys a query cannot see
    scores[-1, 10:20] = scores[-1].max()  # ties among the highest
    got = triton_dsa.select_topk(scores, k, (block, 4)).long()
    assert got.shape == (rows, k) and all(len(set(row.tolist())) == k for row in got)
    assert torch.equal(got, got.sort(-1).values)  # in position order
    expected = scores.topk(k, dim=-1).values
    assert torch.equal(scores.gather(-1, got).sort(-1).values, expected.sort(-1).values)


@pytest.mark.parametrize("keys, k", [(200, 60), (200, 8), (5000, 100)])
def test_select_topk_breaks_ties_at_the_kth_score_by_lowest_position(keys, k):
    """Scores 1 on the last 50 keys, 0 before: the 50 ones, then the lowest-positioned zeros. (200, 8): the k-th
    score is 1 and its ties overflow the candidate slots; (5000, 100): groups of 2 keys."""
    from kvplan.models import triton_dsa

    device = _kernel_device()
    scores = torch.zeros(2, keys, device=device)
    scores[:, -50:] = 1.0
    got = triton_dsa.select_topk(scores, k).long().sort(-1).values
    ones = torch.arange(keys - 50, keys, device=device)
    expected = ones[:k] if k <= 50 else torch.cat([torch.arange(k - 50, device=device), ones])
    assert torch.equal(got, expected.expand(2, -1))


@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize("rows, keys, k", TOPK_SHAPES + [(2, 300, 299)])
def test_radix_topk_picks_what_select_topk_picks(rows, keys, k, block):
    """The same positions as select_topk (the values torch.topk picks, ties at the k-th score by lowest position),
    in position order, also where most scores are -inf (a row with 3 live scores for k >= 5)."""
    from kvplan.models import triton_dsa

    device = _kernel_device()
    g = torch.Generator(device=device).manual_seed(keys + block)
    scores = torch.randn(rows, keys, device=device, generator=g)
    scores[0, ::3] = float("-inf")
    scores[-1, 10:20] = scores[-1].max()
    if rows > 2:
        scores[1, 3:] = float("-inf")
    got = triton_dsa.radix_topk(scores, k, (block, 4, 4)).long()
    assert torch.equal(got, triton_dsa.select_topk(scores, k, (block, 4)).long())
    expected = scores.topk(k, dim=-1).values
    assert torch.equal(scores.gather(-1, got).sort(-1).values, expected.sort(-1).values)


@pytest.mark.parametrize("keys, k", [(200, 60), (200, 8), (5000, 100)])
def test_radix_topk_breaks_ties_at_the_kth_score_by_lowest_position(keys, k):
    from kvplan.models import triton_dsa

    device = _kernel_device()
    scores = torch.zeros(2, keys, device=device)
    scores[:, -50:] = 1.0
    got = triton_dsa.radix_topk(scores, k, triton_dsa.RADIX_CONFIGS[0]).long()
    ones = torch.arange(keys - 50, keys, device=device)
    expected = ones[:k] if k <= 50 else torch.cat([torch.arange(k - 50, device=device), ones])
    assert torch.equal(got, expected.expand(2, -1))


def test_select_topk_beats_torch_topk_on_a_gpu():
    """One 1024-query chunk at 128k keys, k = 2048 (DeepSeek-V3.2's): the same values as torch.topk, sooner."""
    from kvplan.models import triton_dsa
    from kvplan.profilers.timing import median_seconds

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    scores = torch.randn(1024, 131072, device=device, generator=torch.Generator(device=device).manual_seed(0))
    got = triton_dsa.select_topk(scores, 2048).long()
    expected = scores.topk(2048, dim=-1).values
    assert torch.equal(scores.gather(-1, got).sort(-1).values, expected.sort(-1).values)
    ours, _ = median_seconds(lambda: triton_dsa.select_topk(scores, 2048), device, 5)
    theirs, _ = median_seconds(lambda: scores.topk(2048, dim=-1, sorted=False), device, 5)
    assert ours < theirs


def test_radix_topk_at_decode_shape_on_a_gpu():
    """16 rows of 128k scores, k = 2048 (DeepSeek-V3.2's decode at batch 16), every launch config: the values
    torch.topk picks, also in rows that are -inf past an early position."""
    from kvplan.models import triton_dsa

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    scores = torch.randn(16, 131072, device=device, generator=torch.Generator(device=device).manual_seed(0))
    scores[1, 5000:] = float("-inf")
    scores[2, 1000:] = float("-inf")  # fewer live scores than k
    expected = scores.topk(2048, dim=-1).values.sort(-1).values
    for config in triton_dsa.RADIX_CONFIGS:
        got = triton_dsa.radix_topk(scores, 2048, config).long()
        assert torch.equal(scores.gather(-1, got).sort(-1).values, expected)

