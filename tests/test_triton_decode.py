"""The Triton decode kernels (kvplan.models.triton_decode) against the layers' PyTorch paths, on a CUDA GPU or
on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set before the import); skipped without Triton."""

import os
from dataclasses import replace

import pytest
import torch

from kvplan.kinds import MLA, TPA, DenseAttention
from kvplan.models import build
from kvplan.models.common import decode_mask
from kvplan.models.mla import latent_attention

from test_models import _DSA, _MLA, tiny


@pytest.fixture(autouse=True)
def _interpreter_scalars(monkeypatch):
    """Triton 3.6's interpreter turns a scalar (a one-element array there) into a Python int with int(array),
    which NumPy >= 2.4 refuses (a loop bound loaded from memory); .item() is what it means."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patched)


def _kernel_device():
    """Where the Triton kernels can be checked: a GPU, or the CPU under TRITON_INTERPRET=1."""
    from kvplan.models import triton_decode

    if not triton_decode.HAVE_TRITON:
        pytest.skip("Triton is not installed")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1")


def _dtypes(device):
    """(dtype, relative tolerance): fp32 products run in TF32 on the GPU; the interpreter has no bf16 products."""
    if device == "cpu":
        return [(torch.float32, 1e-4)]
    return [(torch.float32, 2e-2), (torch.bfloat16, 5e-2)]


def _close(got, expected, tol):
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol * expected.abs().max().item())


# (slots, position): every slot live, half of them live (the blocks past the position are skipped), a cache
# shorter than one key block, and slots a multiple of the key block (loads unmasked over keys) full and not.
POSITIONS = ((70, 69), (70, 30), (9, 8), (64, 63), (64, 40))


@pytest.mark.parametrize("shape", [(6, 8, 3, 2, 1, None), (47, 64, 6, 2, 2, None), (5, 24, 2, 1, 3, 7)])
def test_tpa_kernel_equals_pytorch_path(shape):
    from kvplan.models import triton_decode

    device = _kernel_device()
    h, d, r_q, r_k, r_v, window = shape
    desc = tiny(TPA(n_heads=h, head_dim=d, q_rank=r_q, k_rank=r_k, v_rank=r_v), windows=(window, None) if window else ())
    for dtype, tol in _dtypes(device):
        for slots, pos in POSITIONS:
            net = build(desc, max_batch=3, max_context=slots, dtype=dtype, kv_dtype=None, device=device)
            for layer in (block.attention for block in net.layers):
                for name in ("a_k", "b_k", "a_v", "b_v"):
                    getattr(layer, name).normal_()
                # Scaled as TPA.decode hands it over (scale / k_rank), so scores stay O(1): unscaled N(0, 1)
                # queries give scores of tens, where bf16 rounding alone can swap which key wins the softmax.
                q = torch.randn(3, h, d, device=device, dtype=dtype) * (d ** -0.5 / r_k)
                position = torch.tensor([pos], device=device)
                expected = layer._attend_factors(q, position)
                got = triton_decode.tpa_decode(q, layer.a_k, layer.b_k, layer.a_v, layer.b_v, position)
                _close(got, expected, tol)
                # The FlashTPA order: A_Q [B, h, R_Q] and B_Q [B, R_Q, d], scaled so q . B_K stays O(1) again.
                a_q = torch.randn(3, h, r_q, device=device, dtype=dtype) * ((r_q * d) ** -0.5 / r_k)
                b_q = torch.randn(3, r_q, d, device=device, dtype=dtype)
                expected = layer._attend_flash(a_q, b_q, position)
                got = triton_decode.tpa_decode(a_q, layer.a_k, layer.b_k, layer.a_v, layer.b_v, position, b_q=b_q)
                _close(got, expected, tol)


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 4, 12), (6, 2, 8), (8, 1, 64), (3, 3, 128)],
                         ids=["mha", "gqa", "mqa", "mha-128"])
def test_dense_kernel_equals_softmax_over_live_slots(heads, kv_heads, head_dim):
    """dense_decode against softmax(q k^T * scale) v written out over the slots <= position, with caches
    long enough for several split-KV slices (600 slots: three slices of 256 keys)."""
    from kvplan.models import triton_decode

    device = _kernel_device()
    gen = torch.Generator().manual_seed(11)
    group = heads // kv_heads
    for dtype, tol in _dtypes(device):
        for slots, pos in POSITIONS + ((600, 599), (600, 300)):
            q = torch.randn(2, heads, head_dim, generator=gen).to(device, dtype)
            k = torch.randn(2, kv_heads, slots, head_dim, generator=gen).to(device, dtype)
            v = torch.randn(2, kv_heads, slots, head_dim, generator=gen).to(device, dtype)
            scale = head_dim ** -0.5
            keys = k.repeat_interleave(group, 1)[:, :, :pos + 1].float()  # [2, heads, live, d]
            weights = torch.softmax((q.float()[:, :, None, :] * keys).sum(-1) * scale, dim=-1)
            expected = (weights[..., None] * v.repeat_interleave(group, 1)[:, :, :pos + 1].float()).sum(2)
            got = triton_decode.dense_decode(q, k, v, torch.tensor([pos], device=device), scale)
            _close(got, expected, tol)


@pytest.mark.parametrize("spec", [_MLA, replace(_MLA, n_heads=20, kv_lora_rank=64, qk_rope_head_dim=16)],
                         ids=["tiny", "20-heads"])
def test_mla_kernel_equals_pytorch_path(spec):
    from kvplan.models import triton_decode

    device = _kernel_device()
    L, R = spec.kv_lora_rank, spec.qk_rope_head_dim
    for dtype, tol in _dtypes(device):
        for slots, pos in POSITIONS:
            kv = torch.randn(3, slots, L + R, device=device, dtype=dtype)
            q_cat = torch.randn(3, spec.n_heads, L + R, device=device, dtype=dtype) * (L + R) ** -0.5
            position = torch.tensor([pos], device=device)
            expected = latent_attention(q_cat, kv, L, decode_mask(slots, position))
            got = triton_decode.mla_decode(q_cat, kv, position, L)
            assert got.shape == expected.shape and got.dtype == dtype
            _close(got, expected, tol)


@pytest.mark.parametrize("slots, pos", [(70, 69), (70, 30), (64, 12)])
def test_mla_kernel_reads_chosen_rows_in_place(slots, pos):
    """DSA's form: attend only the chosen slots (any order), leaving out those past the position."""
    from kvplan.models import triton_decode

    device = _kernel_device()
    L, R, k = _MLA.kv_lora_rank, _MLA.qk_rope_head_dim, 24
    generator = torch.Generator().manual_seed(slots + pos)
    for dtype, tol in _dtypes(device):
        kv = torch.randn(3, slots, L + R, generator=generator).to(device, dtype)
        q_cat = (torch.randn(3, _MLA.n_heads, L + R, generator=generator) * (L + R) ** -0.5).to(device, dtype)
        chosen = torch.stack([torch.randperm(slots, generator=generator)[:k] for _ in range(3)]).to(device)
        position = torch.tensor([pos], device=device)
        rows = kv.gather(1, chosen.unsqueeze(-1).expand(-1, -1, L + R))
        expected = latent_attention(q_cat, rows, L, (chosen <= pos).unsqueeze(1))
        got = triton_decode.mla_decode(q_cat, kv, position, L, chosen=chosen)
        _close(got, expected, tol)


@pytest.mark.parametrize("gather", [False, True])
def test_every_mla_config_at_deepseek_shape(gather):
    """Each launch config the timing may pick, at DeepSeek-V3's head count and widths (GPU only: the interpreter
    would take minutes)."""
    from kvplan.models import triton_decode

    if not torch.cuda.is_available() or not triton_decode.HAVE_TRITON:
        pytest.skip("needs a CUDA GPU and Triton")
    H, L, R, slots, pos = 128, 512, 64, 3000, 2900
    generator = torch.Generator().manual_seed(0)
    kv = torch.randn(2, slots, L + R, generator=generator).to("cuda", torch.bfloat16)
    q_cat = (torch.randn(2, H, L + R, generator=generator) * (L + R) ** -0.5).to("cuda", torch.bfloat16)
    position = torch.tensor([pos], device="cuda")
    chosen = torch.stack([torch.randperm(slots, generator=generator)[:2048] for _ in range(2)]).cuda()
    if gather:
        rows = kv.gather(1, chosen.unsqueeze(-1).expand(-1, -1, L + R))
        expected = latent_attention(q_cat, rows, L, (chosen <= pos).unsqueeze(1))
    else:
        expected = latent_attention(q_cat, kv, L, decode_mask(slots, position))
    for config in [tiles + (256,) for tiles in triton_decode.MLA_CONFIGS]:  # short slices: several per sequence
        key = ("mla", 2, H, L + R, L, slots, 2048 if gather else slots, gather, torch.bfloat16)
        triton_decode.CHOSEN[key] = config
        try:
            got = triton_decode.mla_decode(q_cat, kv, position, L, chosen=chosen if gather else None)
        finally:
            del triton_decode.CHOSEN[key]
        _close(got, expected, 5e-2)


@pytest.mark.parametrize("group", [1, 4, 8, 16])
def test_topk_through_groups_is_torch_topk(group):
    """The grouped top-k picks the set torch.topk picks; with fewer live (finite) scores than k, every live one."""
    from kvplan.models import triton_decode

    generator = torch.Generator().manual_seed(group)
    scores = torch.randn(3, 512, generator=generator)
    scores[1, 300:] = float("-inf")
    scores[2, 10:] = float("-inf")  # 10 live slots, k = 32
    got = triton_decode.topk_indices(scores, 32, group=group)
    expected = scores.topk(32, dim=-1).indices
    assert got.shape == (3, 32)
    for row in range(3):
        live = {i for i in expected[row].tolist() if scores[row, i] > float("-inf")}
        assert live <= set(got[row].tolist()) and len(set(got[row].tolist())) == 32
        if row < 2:
            assert set(got[row].tolist()) == set(expected[row].tolist())


_TPA_FLASH = TPA(n_heads=6, head_dim=8, q_rank=3, k_rank=2, v_rank=1)  # decode_order "flash"
_TPA_REBUILD = TPA(n_heads=3, head_dim=8, q_rank=4, k_rank=2, v_rank=2)  # decode_order "rebuild"


_MHA, _GQA, _MQA = DenseAttention(4, 4, 12), DenseAttention(6, 2, 8, qkv_bias=True), DenseAttention(4, 1, 12)


@pytest.mark.parametrize("attention, windows, chunked", [
    (_MLA, (), False), (_MLA, (7, None), False), (_DSA, (), False), (_DSA, (7, None), False),
    (_TPA_FLASH, (7, None), False), (_TPA_REBUILD, (7, None), False), (_MHA, (), False), (_GQA, (7, None), False),
    (_MQA, (), False), (_GQA, (5, None), True)],
    ids=["mla", "mla-ring", "dsa", "dsa-ring", "tpa-flash-ring", "tpa-rebuild-ring", "mha", "gqa-ring", "mqa",
         "gqa-chunked"])
def test_layer_decode_with_kernel_equals_without(attention, windows, chunked, monkeypatch):
    """Whole decode steps with the kernel on and off: from a 3-token prompt (DSA's top-5 then holds keys
    that may not be attended, which the kernel skips by position) to past a ring's wrap and, chunked, across
    chunk boundaries (the limit restarts at each chunk)."""
    from kvplan.models import triton_decode

    device = _kernel_device()
    desc = tiny(attention, windows=windows, chunked=chunked)
    toks = torch.randint(0, desc.vocab_size, (2, 14), generator=torch.Generator().manual_seed(3)).to(device)
    outputs = {}
    for on in (True, False):
        # The interpreter runs kernels on CPU tensors, which enabled() would refuse.
        monkeypatch.setattr(triton_decode, "enabled", lambda x, on=on: on)
        net = build(desc, max_batch=2, max_context=16, dtype=torch.float32, kv_dtype=None, device=device, seed=5)
        net.prefill(toks[:, :3])
        outputs[on] = torch.stack([net.decode(toks[:, p:p + 1], torch.tensor([p], device=device))
                                   for p in range(3, 14)])
    _close(outputs[True], outputs[False], 2e-2 if device == "cuda" else 1e-4)


def _index_configs(device, every):
    """The indexer's launch configs to check: on a GPU all (`every`) or one per (orientation, FP8 or bf16
    products); under the interpreter, which runs every product in fp32, one per (keys per step, orientation)."""
    from kvplan.models import triton_decode

    configs = triton_decode.INDEX_CONFIGS
    if device == "cuda" and every:
        return configs
    kind = (lambda c: (c[3], c[4])) if device == "cuda" else (lambda c: (c[0], c[3]))
    return list({kind(c): c for c in reversed(configs)}.values())


@pytest.mark.parametrize("index_head_dim", [16, 128, 200])
def test_dsa_indexer_kernel_equals_pytorch_path(index_head_dim):
    """Scores of FP8 queries against FP8 keys; -inf past the limit (those keys unread)."""
    from kvplan.models import triton_decode

    device = _kernel_device()
    n_heads, slots = 16, 150
    desc = tiny(replace(_DSA, index_n_heads=n_heads, index_head_dim=index_head_dim))
    for dtype, _ in _dtypes(device):
        net = build(desc, max_batch=2, max_context=slots, dtype=dtype, device=device)
        layer = net.layers[0].attention
        k_fp8, k_scale = layer._quantize(torch.randn(2, slots, index_head_dim, device=device, dtype=dtype))
        q_fp8, q_scale = layer._quantize(torch.randn(2, n_heads, index_head_dim, device=device, dtype=dtype))
        weights = torch.randn(2, n_heads, device=device, dtype=dtype)
        expected = layer._index_scores(layer._dequantize(q_fp8, q_scale, dtype).unsqueeze(1), weights.unsqueeze(1),
                                       layer._dequantize(k_fp8, k_scale, dtype))[:, 0]
        key = ("index", 2, n_heads, index_head_dim, layer.group, slots)
        for config in _index_configs(device, index_head_dim == 128):  # the launch configs the timing may pick
            triton_decode.CHOSEN[key] = config
            try:
                got = triton_decode.dsa_index_scores(q_fp8, q_scale, weights.float(), k_fp8, k_scale, layer.group)
                masked = triton_decode.dsa_index_scores(q_fp8, q_scale, weights.float(), k_fp8, k_scale, layer.group,
                                                        torch.tensor([99], device=device))
            finally:
                del triton_decode.CHOSEN[key]
            _close(got, expected, 1e-4 if dtype == torch.float32 and device == "cpu" else 3e-2)
            assert torch.equal(masked[:, :100], got[:, :100]) and bool((masked[:, 100:] == float("-inf")).all())


def test_dsa_decode_inputs_equal_the_pytorch_path():
    """One kernel for the indexer's inputs: queries rotated and quantized, the key rotated, quantized and written at
    slot position % slots (and nowhere else), weights scaled; the PyTorch path's values bit for bit in bf16 (every
    RoPE product of two bf16 values is exact in fp32, so fused multiply-adds round alike), within fp32's last
    bit in fp32 (the CPU's and the GPU's multiply-adds may fuse where the kernel's do not)."""
    from kvplan.models import triton_decode

    device = _kernel_device()
    for dtype in (torch.float32, torch.bfloat16):
        for index_head_dim in (16, 128, 200):
            desc = tiny(replace(_DSA, index_n_heads=16, index_head_dim=index_head_dim))
            layer = build(desc, max_batch=3, max_context=20, dtype=dtype, device=device).layers[0].attention
            x = torch.randn(2, 1, desc.d_model, device=device, dtype=dtype, generator=torch.Generator(device=device)
                            .manual_seed(index_head_dim))
            position = torch.tensor([33], device=device)  # slot 13 of 20 (as in a ring)
            cos, sin = layer.rope.at(torch.tensor([13], device=device))
            with torch.no_grad():
                q, k, w = layer._index_projections(x, layer._query(x)[0])
            k_cache, scale_cache = layer.index_k.clone(), layer.index_scale.clone()
            q_fp8, q_scale, weights = triton_decode.dsa_decode_inputs(q[:, 0], k[:, 0], w[:, 0], cos, sin, k_cache,
                                                                      scale_cache, position, layer.group,
                                                                      layer.weight_scale)
            with torch.no_grad():
                q_rot, w_expected, k_fp8, k_scale = layer._index_rotated(q, k, w, cos, sin)
            q_expected, qs_expected = layer._quantize(q_rot[:, 0])
            k_expected, ks_expected = layer.index_k.clone(), layer.index_scale.clone()
            k_expected[:2, 13], ks_expected[:2, 13] = k_fp8[:, 0], k_scale[:, 0]
            assert torch.equal(weights, w_expected[:, 0].float())
            pairs = [(q_fp8.float(), q_expected.float()), (k_cache.float(), k_expected.float())]
            if dtype == torch.bfloat16:
                assert all(torch.equal(got, expected) for got, expected in pairs)
                assert torch.equal(q_scale, qs_expected) and torch.equal(scale_cache, ks_expected)
            else:
                assert all((got != expected).float().mean() < 0.01 for got, expected in pairs)
                torch.testing.assert_close(q_scale, qs_expected, rtol=1e-6, atol=0)
                torch.testing.assert_close(scale_cache, ks_expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kv_lora_rank, rope", [(24, 8), (512, 64)])
def test_mla_decode_inputs_equal_the_pytorch_path(kv_lora_rank, rope, monkeypatch):
    """The latent row (RMSNorm of the latent, RoPE of the key) written at slot position % slots in one kernel,
    and the absorbed query's rotation, concatenation and scale in another: the PyTorch path's values (_latent and
    write; _absorbed_query) bit for bit in bf16, within a few roundings of the row's largest value in fp32 (the
    fp32 sums of the norm may add in another order; the CPU's and GPU's multiply-adds may fuse where the kernels'
    do not)."""
    from kvplan.models import triton_decode, triton_norm

    device = _kernel_device()
    monkeypatch.setattr(triton_norm, "serves", lambda x, w: False)  # the expected norm: PyTorch's own
    for dtype in (torch.float32, torch.bfloat16):
        desc = tiny(replace(_MLA, kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope))
        layer = build(desc, max_batch=3, max_context=20, dtype=dtype, device=device, kv_dtype=None).layers[0].attention
        g = torch.Generator(device=device).manual_seed(kv_lora_rank)
        with torch.no_grad():
            layer.kv_norm.weight.copy_(torch.rand(kv_lora_rank, device=device, generator=g) + 0.5)
        x = torch.randn(2, 1, desc.d_model, device=device, dtype=dtype, generator=g)
        position = torch.tensor([33], device=device)  # slot 13 of 20 (as in a ring)
        cos, sin = layer.rope.at(torch.tensor([13], device=device))
        cache = layer.kv_cache.clone()
        with torch.no_grad():
            triton_decode.mla_latent_write(layer.wkv_a(x)[:, 0], layer.kv_norm.weight, layer.kv_norm.eps, cos, sin,
                                           cache, position)
            layer.write("kv_cache", layer._latent(x, cos, sin), position)
            q = layer._query(x)[1]
            monkeypatch.setattr(triton_decode, "enabled", lambda x: True)  # CPU tensors too, under the interpreter
            got = layer._absorbed_query(q, cos, sin)  # T == 1: the kernel
            monkeypatch.setattr(triton_decode, "enabled", lambda x: False)
            expected = layer._absorbed_query(q, cos, sin)
        assert got.shape == expected.shape
        pairs = [(cache, layer.kv_cache), (got, expected)]
        if dtype == torch.bfloat16:
            assert all(torch.equal(a, b) for a, b in pairs)
        else:
            for a, b in pairs:  # RoPE's differences cancel: a few roundings of the largest value apart
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(a, b, rtol=4 * eps, atol=4 * eps * b.abs().max().item())
        assert torch.equal(cache[:, :13], layer.kv_cache[:, :13]) and torch.equal(cache[2], layer.kv_cache[2])


@pytest.mark.parametrize("kv_lora_rank, rope", [(24, 8), (512, 64)])
def test_mla_prompt_query_equals_the_pytorch_path(kv_lora_rank, rope, monkeypatch):
    """The absorbed queries of a prompt's chunk (DSA prefill's) in one kernel, each token at its own angles: the
    PyTorch path's values bit for bit in bf16, within a few roundings in fp32 (test_mla_decode_inputs_...)."""
    from kvplan.models import triton_decode

    device = _kernel_device()
    for dtype in (torch.float32, torch.bfloat16):
        desc = tiny(replace(_MLA, kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope))
        layer = build(desc, max_batch=2, max_context=20, dtype=dtype, device=device).layers[0].attention
        g = torch.Generator(device=device).manual_seed(rope)
        x = torch.randn(2, 9, desc.d_model, device=device, dtype=dtype, generator=g)
        cos, sin = layer.rope.at(9)
        with torch.no_grad():
            q = layer._query(x)[1][:, 4:9]  # tokens 4..8 of two sequences
            monkeypatch.setattr(triton_decode, "enabled", lambda x: True)
            got = layer._absorbed_query(q, cos[4:9], sin[4:9])
            monkeypatch.setattr(triton_decode, "enabled", lambda x: False)
            expected = layer._absorbed_query(q, cos[4:9], sin[4:9])
        assert got.shape == expected.shape
        if dtype == torch.bfloat16:
            assert torch.equal(got, expected)
        else:
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(got, expected, rtol=4 * eps, atol=4 * eps * expected.abs().max().item())
