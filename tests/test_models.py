"""kvplan.models on the CPU: cached decode equals the full forward for every kind, each kind's cached form
equals its naive form, cache bytes equal the estimate, and FlopCounterMode's counts equal the estimate's
FLOPs once the work the estimate leaves out (or the kernel adds) is accounted for, term by term."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kvplan.kinds import DSA, MLA, TPA, DenseAttention, keys_attended_sum
from kvplan.kinds import dsa as dsa_kind
from kvplan.model import FeedForward, Model
from kvplan.models import build, sliced
from kvplan.models import dsa as dsa_module
from kvplan.models.common import apply_rope, attend_prefill, band_mask
from kvplan.recast import recast
from model_helpers import (VOCAB, assert_cache_bytes_equal_the_estimate, assert_cached_decode_equals_forward,
                           assert_close, assert_counted_prefill_flops, decode_graph, decode_logits, decode_step_flops,
                           estimator, f64, tokens)

D = 48
_MLA = MLA(n_heads=4, kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10, q_lora_rank=20)
# 16 indexer heads: with few heads, relu often zeroes every head for a key and top-k meets exact ties.
_DSA = DSA(_MLA, index_n_heads=16, index_head_dim=12, index_topk=5)


def tiny(attention, windows=(), ffn=None, layers=2, **kw) -> Model:
    return Model(name="tiny", n_layers=layers, d_model=D, vocab_size=VOCAB, attention=attention,
                 ffn=ffn or FeedForward(72), layer_windows=windows, **kw)


_MOE = FeedForward(72, n_experts=4, n_active_experts=2, n_shared_experts=1, moe_intermediate=16, n_dense_layers=1)
KINDS = {
    "mha": tiny(DenseAttention(4, 4, 12)),
    "gqa": tiny(DenseAttention(6, 2, 8, qkv_bias=True)),
    "mqa": tiny(DenseAttention(4, 1, 12), tie_embeddings=True),
    "window": tiny(DenseAttention(4, 2, 12), windows=(5, 5)),
    "local-global": tiny(DenseAttention(4, 2, 12), windows=(4, None, 4), layers=3),
    "mla": tiny(_MLA),
    "mla-no-q-lora": tiny(replace(_MLA, q_lora_rank=0)),
    "tpa": tiny(TPA(n_heads=6, head_dim=8, q_rank=3, k_rank=2, v_rank=1)),
    "tpa-window": tiny(TPA(n_heads=6, head_dim=8, q_rank=2, k_rank=1, v_rank=2), windows=(6, None)),
    # R_Q (h + d_h) = 40 > h d_h = 24: decode rebuilds q (the others run the FlashTPA order).
    "tpa-rebuild": tiny(TPA(n_heads=3, head_dim=8, q_rank=4, k_rank=2, v_rank=2), windows=(5, None)),
    "dsa": tiny(_DSA),
    "dsa-window": tiny(_DSA, windows=(7, None)),
    "moe": tiny(DenseAttention(4, 2, 12), ffn=_MOE),
}


@pytest.fixture(autouse=True)
def small_dsa_chunks(monkeypatch):
    # Chunks of 4 queries so DSA prefill runs several chunks even at 16 tokens (the model and the counted
    # figure must both see the change).
    monkeypatch.setattr(dsa_module, "DSA_QUERY_CHUNK", 4)
    monkeypatch.setattr(dsa_kind, "QUERY_CHUNK", 4)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_equals_full_forward(kind):
    assert_cached_decode_equals_forward(KINDS[kind])


def test_recast_models_build_and_decode():
    base = tiny(DenseAttention(4, 4, 12))
    for spec in ("gqa:kv_heads=2", "mqa", "mla", "tpa:k_rank=2,v_rank=2", "dsa:index_topk=4,index_n_heads=8,index_head_dim=8",
                 "window:size=5,global_every=2"):
        net = f64(recast(base, spec))
        toks = tokens(1, 10)
        assert_close(decode_logits(net, toks, 4), net.forward(toks)[:, 3:])


def test_sliced_keeps_first_layers():
    model = KINDS["local-global"]
    two = sliced(model, 2)
    assert two.n_layers == 2 and two.layer_windows == (4, None)
    assert len(build(two, max_batch=1, max_context=8, dtype=torch.float32).layers) == 2


def _explicit_attention(q, k, v, scale):
    """softmax(q . k * scale) v for one query per sequence: q [B, h, dq], k [B, S, h, dq], v [B, S, h, dv]."""
    probs = torch.softmax(torch.einsum("bhd,bshd->bhs", q, k) * scale, dim=-1)
    return torch.einsum("bhs,bshd->bhd", probs, v)


def _layer_after_prefill(desc, x, prompt, **layer_settings):
    net = f64(desc)
    layer = net.layers[0].attention
    for name, value in layer_settings.items():
        setattr(layer, name, value)
    with torch.no_grad():
        layer.prefill(x[:, :prompt])
        out = layer.decode(x[:, prompt:prompt + 1], torch.tensor([prompt]))
    return layer, out


@pytest.mark.parametrize("order", ["flash", "rebuild"])
@torch.no_grad()
def test_tpa_factorized_decode_equals_attention_over_rebuilt_qkv(order):
    desc = KINDS["tpa"]
    s, T = desc.attention, 9
    assert s.decode_order == "flash"  # R_Q (h + d_h) = 42 < h d_h = 48
    x = torch.randn(2, T + 1, D, dtype=torch.float64)
    layer, out = _layer_after_prefill(desc, x, T, decode_order=order)
    # Rebuild K and V per head from the cached factors ((1/R) sum_r a_r b_r^T), Q from the new token's factors.
    # A factors are cached token-last [B, R, h, slots], B factors [B, slots, R, d_h].
    a_k, a_v = (getattr(layer, n)[:2, ..., :T + 1] for n in ("a_k", "a_v"))
    b_k, b_v = (getattr(layer, n)[:2, :T + 1] for n in ("b_k", "b_v"))
    k = torch.einsum("brhs,bsrd->bshd", a_k, b_k) / s.k_rank
    v = torch.einsum("brhs,bsrd->bshd", a_v, b_v) / s.v_rank
    f = layer._factors(x[:, T:], *layer.rope.at(torch.tensor([T])))
    q = torch.einsum("brh,brd->bhd", f["a_q"][:, 0], f["b_q"][:, 0]) / s.q_rank
    expected = layer.wo(_explicit_attention(q, k, v, s.head_dim ** -0.5).reshape(2, 1, -1))
    assert_close(out, expected)


@torch.no_grad()
def test_mla_absorbed_decode_equals_decompressed_attention():
    desc = KINDS["mla"]
    s, T = desc.attention, 9
    x = torch.randn(2, T + 1, D, dtype=torch.float64)
    layer, out = _layer_after_prefill(desc, x, T)
    # Decompress the cached latents into per-head K = [W_UK c, k_rope] and V = W_UV c.
    cache = layer.kv_cache[:2, :T + 1]
    kv = layer.wkv_b(cache[..., :s.kv_lora_rank]).view(2, T + 1, s.n_heads, -1)
    k_nope, v = kv.split((s.qk_nope_head_dim, s.v_head_dim), dim=-1)
    k_rope = cache[..., s.kv_lora_rank:].unsqueeze(2).expand(-1, -1, s.n_heads, -1)
    k = torch.cat([k_nope, k_rope], dim=-1)
    _, q = layer._query(x[:, T:])
    q_nope, q_rope = q.split((s.qk_nope_head_dim, s.qk_rope_head_dim), dim=-1)
    q = torch.cat([q_nope, apply_rope(q_rope, *layer.rope.at(torch.tensor([T])))], dim=-1)[:, 0]
    expected = layer.wo(_explicit_attention(q, k, v, s.qk_head_dim ** -0.5).reshape(2, 1, -1))
    assert_close(out, expected)


def _same_weights(source, target):
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not missing


def test_dsa_with_topk_covering_the_context_equals_dense_mla():
    T = 12
    dsa = f64(tiny(replace(_DSA, index_topk=T)), max_context=T)
    mla = f64(tiny(_MLA), max_context=T)
    _same_weights(dsa, mla)
    toks = tokens(2, T)
    assert_close(dsa.forward(toks), mla.forward(toks))
    assert_close(decode_logits(dsa, toks, 5), decode_logits(mla, toks, 5))
    # With fewer keys than the context the indexer's choice matters: the outputs differ.
    sparse = f64(tiny(replace(_DSA, index_topk=3)), max_context=T)
    _same_weights(dsa, sparse)
    assert not torch.allclose(sparse.forward(toks)[:, 4:], mla.forward(toks)[:, 4:])


def test_window_covering_the_context_equals_full_attention():
    T = 12
    full = f64(KINDS["gqa"], max_context=T)
    for window in (T, T + 5):
        windowed = f64(replace(KINDS["gqa"], layer_windows=(window, window)), max_context=T)
        toks = tokens(2, T)
        assert_close(windowed.forward(toks), full.forward(toks))
        assert_close(decode_logits(windowed, toks, 4), decode_logits(full, toks, 4))
    narrow = f64(replace(KINDS["gqa"], layer_windows=(3, 3)), max_context=T)
    assert not torch.allclose(narrow.forward(toks)[:, 3:], full.forward(toks)[:, 3:])


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_windowed_prefill_equals_full_attention_under_a_band_mask(kv_heads):
    B, H, T, d = 2, 4, 13, 8
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, T, d, dtype=torch.float64, generator=g)
    k, v = (torch.randn(B, kv_heads, T, d, dtype=torch.float64, generator=g) for _ in range(2))
    positions = torch.arange(T)
    for window, chunk in ((3, None), (5, 2), (4, 7)):
        band = band_mask(positions, positions, window)  # [T, T]: 0 <= i - j < window
        assert band.sum() == keys_attended_sum(T, window)
        rep = H // kv_heads
        expected = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                  attn_mask=band, scale=0.3)
        assert_close(attend_prefill(q, k, v, 0.3, window, chunk), expected)


# --- cache bytes ------------------------------------------------------------------------------------------
CACHE_KINDS = {**{k: KINDS[k] for k in ("mha", "gqa", "mqa", "local-global", "mla", "tpa", "tpa-window", "dsa",
                                         "dsa-window")},
               "dsa-wide-indexer": tiny(replace(_DSA, index_head_dim=200))}  # two scale groups of 128


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8", "fp32"])
@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_cache_bytes_equal_the_estimate(kind, kv_dtype):
    assert_cache_bytes_equal_the_estimate(CACHE_KINDS[kind], kv_dtype)


def test_gqa_cache_bytes_by_hand():
    # 2 layers x (K + V) x 2 KV heads x 8 head_dim x 2 bytes (bf16) x 3 sequences x 24 tokens = 9216 bytes.
    net = build(KINDS["gqa"], max_batch=3, max_context=24, dtype=torch.float32, kv_dtype="bf16")
    assert net.cache_bytes_allocated() == 2 * 2 * 2 * 8 * 2 * 3 * 24
    # DSA: per token per layer the latent and RoPE key (24 + 8) x 2 bytes, plus 12 FP8 indexer bytes and one
    # fp32 scale (12 elements fit one group of 128): 64 + 16 = 80 bytes; 2 layers x 3 x 24 tokens.
    dsa = build(KINDS["dsa"], max_batch=3, max_context=24, dtype=torch.float32, kv_dtype="bf16")
    assert dsa.cache_bytes_allocated() == 2 * 3 * 24 * ((24 + 8) * 2 + 12 + 4)


# --- FLOPs ------------------------------------------------------------------------------------------------
FLOP_KINDS = ("gqa", "mqa", "local-global", "mla", "tpa", "tpa-rebuild", "dsa", "moe")


@pytest.mark.parametrize("kind", FLOP_KINDS)
def test_prefill_flops_equal_the_estimate(kind):
    desc, B, T = KINDS[kind], 2, 14
    est = estimator(desc)

    def attention_flops(pairs_per_layer):
        return B * sum(est.pair_flops["prefill"] * pairs + est.token_flops["prefill"] * T
                       + est.indexer_pair_flops * index_pairs for pairs, index_pairs in pairs_per_layer)

    # The estimate's attention term is exactly this sum over the causal pairs each query attends
    # (min(i+1, window, topk)) and the keys the indexer scores (min(i+1, window)).
    causal = [(keys_attended_sum(T, min(c for c in (w, desc.attention.sparse_topk, T) if c)),
               keys_attended_sum(T, w) if isinstance(desc.attention, DSA) else 0) for w in desc.layer_windows]
    assert est.prefill_attention_flops(B, T) == attention_flops(causal)
    # What FlopCounterMode sees: the linear layers as estimated (LM head on the last token only) plus the same
    # per-pair terms over the rectangles the kernels are handed: one T x T causal SDPA call; a window w < T
    # in chunks of window_chunk(w) queries against keys (chunk start - w + 1)..chunk end; DSA in chunks of DSA_QUERY_CHUNK
    # queries, its indexer scoring every visible key and attention taking min(visible, top-k) per query.
    # Matrix products only on both sides, so the match is exact.
    assert_counted_prefill_flops(desc, B, T)


@pytest.mark.parametrize("kind", FLOP_KINDS)
def test_decode_flops_equal_the_estimate(kind):
    desc, B, S = KINDS[kind], 2, 10
    est = estimator(desc)
    # Decode attends all S slots of a static cache (masking the unwritten ones), so measure the step at
    # position S-1, where every slot is live and the estimate's min(position + 1, cap) keys are the slots.
    flops = decode_step_flops(desc, B, S)
    # Matrix products only on both sides (TPA weighs by A_K and A_V elementwise, left out by both), so exact;
    # TPA counts the contraction order its layer runs (TPA.decode_order).
    assert flops == B * est.decode_flops_per_token(S - 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["gqa", "window", "mla", "tpa", "dsa"])
def test_decode_in_a_cuda_graph_equals_eager(kind):
    desc, S = KINDS[kind], 32
    net = build(desc, max_batch=2, max_context=S, dtype=torch.float32, kv_dtype="fp32", device="cuda")
    toks = tokens(2, S).cuda()
    net.prefill(toks[:, :20])
    graph, static_tok, static_pos, static_out = decode_graph(net, toks[:, 20:21], torch.tensor([20], device="cuda"))
    eager = build(desc, max_batch=2, max_context=S, dtype=torch.float32, kv_dtype="fp32", device="cuda")
    _same_weights(net, eager)
    eager.prefill(toks[:, :20])
    for pos in range(20, 26):
        static_tok.copy_(toks[:, pos:pos + 1])
        static_pos.fill_(pos)
        graph.replay()
        torch.testing.assert_close(static_out, eager.decode(toks[:, pos:pos + 1], torch.tensor([pos], device="cuda")),
                                   rtol=1e-4, atol=1e-4)


def test_bench_decode_smoke_on_cpu(tmp_path):
    from kvplan.profilers import bench_decode

    rows = bench_decode.main(["--device", "cpu", "--smoke", "--kinds", "tpa,dsa", "--repeats", "1", "--out", str(tmp_path)])
    assert {r["kind"] for r in rows} == {"tpa", "dsa"} and all(r["step_ms"] > 0 for r in rows)
    lines = (tmp_path / "bench_decode.csv").read_text().splitlines()
    assert len(lines) == 1 + len(rows) and lines[0].startswith("kind,model,layers")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lm_head_stored_transposed_on_cuda_is_the_same_model():
    """On CUDA the LM head's weight lies as its transpose's rows (models.transformer.Transformer); it loads the same
    state dict and gives the same logits as the model on the CPU."""
    desc, S = KINDS["gqa"], 16
    cpu = build(desc, max_batch=2, max_context=S, dtype=torch.float32, kv_dtype="fp32")
    gpu = build(desc, max_batch=2, max_context=S, dtype=torch.float32, kv_dtype="fp32", device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    head = gpu.lm_head.weight
    assert head.shape == cpu.lm_head.weight.shape and head.stride() == (1, head.size(0))
    assert torch.equal(head.cpu(), cpu.lm_head.weight)
    toks = tokens(2, S)
    torch.testing.assert_close(gpu.forward(toks.cuda()).cpu(), cpu.forward(toks), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.prefill(toks.cuda()).cpu(), cpu.prefill(toks), rtol=1e-4, atol=1e-4)
