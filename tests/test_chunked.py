"""Chunked attention (kvplan.model.Model.chunked, Llama 4) in kvplan.models on the CPU: a query at position p
attends keys p - p mod C .. p of its own chunk of C tokens, and a chunked layer caches one chunk.

Checked for every kind of the registry and for a sparse kind whose top-k is shorter than the chunk: prefill then
cached decode across several chunk boundaries equals the uncached forward; the cache tensors hold
Estimator.kv_cache_bytes; FlopCounterMode's prefill and decode FLOPs equal the estimate's, also by hand; and
attend_prefill's chunked path equals chunked attention written out from its definition in float64.
"""

import json
from dataclasses import replace

import pytest
import torch

from kvplan.families import model_from_config
from kvplan.kinds import DSA, KINDS, MLA, DenseAttention
from kvplan.kinds import dsa as dsa_kind
from kvplan.model import FeedForward, Model
from kvplan.models import build, sliced
from kvplan.models import dsa as dsa_module
from kvplan.models.common import attend_prefill
from kvplan.presets import get_preset
from kvplan.profilers.flops import count_flops
from kvplan.recast import recast
from model_helpers import (VOCAB, assert_cache_bytes_equal_the_estimate, assert_close, assert_counted_prefill_flops,
                           decode_graph, decode_logits, decode_step_flops, estimator, f64, tokens)

D, CHUNK = 64, 8
LLAMA4_PATTERN = (CHUNK, CHUNK, CHUNK, None)  # three chunked layers, then a global one, as Llama 4 repeats them
MOE = FeedForward(96, n_experts=4, n_active_experts=1, n_shared_experts=1, moe_intermediate=32, n_dense_layers=0)
# Top-k 5 < chunk 8: past the fifth key of a chunk the indexer's choice matters. 16 indexer heads: with few,
# relu often zeroes every head for a key and top-k meets exact ties.
SPARSE = DSA(MLA.example(), index_n_heads=16, index_head_dim=12, index_topk=5)


def chunked_model(attention, windows=LLAMA4_PATTERN, ffn=None) -> Model:
    return Model(name="tiny-chunked", n_layers=len(windows), d_model=D, vocab_size=VOCAB, attention=attention,
                 ffn=ffn or FeedForward(96), layer_windows=windows, chunked=True)


MODELS = {**{name: chunked_model(cls.example()) for name, cls in KINDS.items() if not cls.recurrent},  # attention kinds chunk
          "dense-moe": chunked_model(DenseAttention.example(), ffn=MOE),
          "dsa-topk-below-chunk": chunked_model(SPARSE, (CHUNK, None))}
every_model = pytest.mark.parametrize("name", MODELS)


@pytest.fixture(autouse=True)
def small_dsa_pieces(monkeypatch):
    # DSA prefill in pieces of 5 queries, so pieces also end at chunk boundaries (8, 16, ...) before 5 queries
    # (the model and the counted figure must both see the change).
    monkeypatch.setattr(dsa_module, "DSA_QUERY_CHUNK", 5)
    monkeypatch.setattr(dsa_kind, "QUERY_CHUNK", 5)


# --- outputs -------------------------------------------------------------------------------------------------
@every_model
def test_prefill_then_decode_across_chunks_equals_full_forward(name):
    net = f64(MODELS[name], max_context=40)
    toks = tokens(2, 40)
    reference = net.forward(toks)  # [B, T, V], no cache
    # A 5-token prompt, then decode steps over positions 5..39: four chunk starts (8, 16, 24, 32) in decode.
    # A 19-token prompt leaves the previous chunk's keys in slots 3..7 of each chunked layer's cache.
    for prompt in (5, 19):
        net.reset_cache()
        assert_close(decode_logits(net, toks, prompt), reference[:, prompt - 1:])


@every_model
def test_chunks_are_not_a_sliding_window(name):
    desc = MODELS[name]
    chunked, sliding = f64(desc, max_context=20), f64(replace(desc, chunked=False), max_context=20)
    toks = tokens(2, 20)
    # Within the first chunk a chunk and a window of 8 see the same keys; past it they do not.
    assert_close(chunked.forward(toks)[:, :CHUNK], sliding.forward(toks)[:, :CHUNK])
    assert not torch.allclose(chunked.forward(toks)[:, CHUNK:], sliding.forward(toks)[:, CHUNK:])


def _by_definition(q, k, v, scale, chunk):
    """Chunked causal attention from its definition: the query at i takes a softmax over the keys
    j = chunk * (i // chunk) .. i of its KV head (query head h reads KV head h // (H / H_kv))."""
    B, H, T, _ = q.shape
    group = H // k.size(1)
    out = torch.zeros(B, H, T, v.size(-1), dtype=torch.float64)
    for i in range(T):
        seen = slice(chunk * (i // chunk), i + 1)
        for h in range(H):
            scores = (k[:, h // group, seen] * q[:, h, i, None]).sum(-1) * scale  # [B, keys]
            weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
            weights = weights / weights.sum(-1, keepdim=True)
            out[:, h, i] = (weights[..., None] * v[:, h // group, seen]).sum(1)
    return out


@pytest.mark.parametrize("T, chunk, heads, kv_heads", [(13, 4, 4, 2), (16, 8, 4, 4), (10, 16, 6, 1), (9, 1, 2, 2),
                                                       (21, 8, 6, 3)])
def test_attend_prefill_equals_chunked_attention_by_definition(T, chunk, heads, kv_heads):
    g = torch.Generator().manual_seed(T + chunk)
    q = torch.randn(2, heads, T, 8, dtype=torch.float64, generator=g)
    k = torch.randn(2, kv_heads, T, 8, dtype=torch.float64, generator=g)
    v = torch.randn(2, kv_heads, T, 6, dtype=torch.float64, generator=g)
    assert_close(attend_prefill(q, k, v, 0.3, None, attention_chunk=chunk), _by_definition(q, k, v, 0.3, chunk))


# --- cache --------------------------------------------------------------------------------------------------
@every_model
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8", "fp32"])
def test_cache_bytes_equal_the_estimate(name, kv_dtype):
    assert_cache_bytes_equal_the_estimate(MODELS[name], kv_dtype)  # max_context 24: three chunks


def test_dense_cache_bytes_by_hand():
    # Per token per layer K and V of 2 KV heads x 16 (bf16): 2 x 2 x 16 x 2 bytes; 3 sequences. The three
    # chunked layers hold one chunk (8 slots), the global layer all 24 tokens.
    net = build(MODELS["dense"], max_batch=3, max_context=24, dtype=torch.float32, kv_dtype="bf16")
    assert net.cache_bytes_allocated() == 2 * 2 * 16 * 2 * 3 * (3 * 8 + 24)
    assert [block.attention.slots for block in net.layers] == [8, 8, 8, 24]


# --- FLOPs --------------------------------------------------------------------------------------------------
@every_model
def test_prefill_flops_counted_equal_the_estimate(name):
    assert_counted_prefill_flops(MODELS[name], batch=2, prompt=21)


def test_dense_prefill_flops_by_hand():
    desc, B, T = MODELS["dense"], 2, 21
    est, pair = estimator(desc), 2 * 4 * (16 + 16)  # q.k and p.v per (query, key, head): 4 heads of 16
    # Exact: a query at p of a chunked layer attends p mod 8 + 1 keys, 1 + ... + 8 twice and 1 + ... + 5 over
    # 21 tokens; a global layer 1 + ... + 21.
    assert est.prefill_attention_flops(B, T) == B * pair * (3 * (36 + 36 + 15) + 21 * 22 // 2)
    # FlopCounterMode: a chunked layer is one causal call per chunk (8 x 8, 8 x 8, 5 x 5 rectangles), a global
    # layer one 21 x 21 call; the linear layers as the estimate counts them.
    net = f64(desc, max_context=T)
    toks = tokens(B, T)
    counted = count_flops(lambda: net.prefill(toks)) - est.prefill_linear_flops(B, T)
    assert counted == B * pair * (3 * (64 + 64 + 25) + 21 * 21)


def test_sparse_prefill_and_decode_flops_by_hand():
    est = estimator(MODELS["dsa-topk-below-chunk"])
    pair, index, token = est.pair_flops["prefill"], est.indexer_pair_flops, est.token_flops["prefill"]
    # 21 tokens. Chunked layer: min(p mod 8 + 1, 5) keys, 1+2+3+4+5+5+5+5 = 30 per whole chunk, 1+...+5 in the
    # third; its indexer scores all p mod 8 + 1 (36 + 36 + 15). Global layer: min(p + 1, 5), 15 + 16 x 5; its
    # indexer p + 1.
    chunked = pair * (30 + 30 + 15) + index * (36 + 36 + 15) + token * 21
    whole = pair * (15 + 16 * 5) + index * 21 * 22 // 2 + token * 21
    assert est.prefill_attention_flops(1, 21) == chunked + whole
    # Decode at position 19 (19 mod 8 = 3): the chunked layer sees 4 keys (top-k 5 takes all), its indexer 4;
    # the global layer attends 5 of 20, its indexer scores 20.
    decode = est.pair_flops["decode"] * (4 + 5) + index * (4 + 20) + 2 * est.token_flops["decode"]
    assert est.decode_attention_flops(19) == decode


@every_model
def test_decode_flops_equal_the_estimate_when_the_chunk_is_full(name):
    desc, B, S = MODELS[name], 2, 24
    # Decode scores every slot of a static cache (masking the others); at position 23 = 2 x 8 + 7 each chunked
    # layer's 8 slots hold the live chunk, and the global layer's 24 slots positions 0..23.
    assert decode_step_flops(desc, B, S) == B * estimator(desc).decode_flops_per_token(S - 1)


def test_dense_decode_mid_chunk_scores_the_whole_chunk_cache():
    desc, B, S = MODELS["dense"], 2, 20
    est = estimator(desc)
    # At position 19 (19 mod 8 = 3) the estimate counts 4 keys per chunked layer; the PyTorch decode scores all
    # 8 slots of the one-chunk cache and masks the 4 after the token's: 3 layers x 4 masked keys more.
    flops = decode_step_flops(desc, B, S)
    assert flops - B * est.decode_flops_per_token(S - 1) == B * 3 * 4 * est.pair_flops["decode"]


# --- Llama 4 ----------------------------------------------------------------------------------------------
TINY_LLAMA4 = {"model_type": "llama4_text", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 32, "intermediate_size_mlp": 96,
               "num_local_experts": 4, "num_experts_per_tok": 1, "attention_chunk_size": CHUNK, "vocab_size": 256,
               "tie_word_embeddings": False}


def test_llama4_layers_are_built_chunked():
    desc = sliced(get_preset("llama-4-scout"), 4)
    assert desc.chunked and desc.layer_windows == (8192, 8192, 8192, None)
    # Built with its first layer's shapes but a 64-wide model, to stay small: the pattern is the preset's.
    small = model_from_config(TINY_LLAMA4)
    net = build(small, max_batch=1, max_context=20, dtype=torch.float32)
    spans = [(b.attention.window, b.attention.attention_chunk, b.attention.slots) for b in net.layers]
    assert spans == [(None, CHUNK, CHUNK)] * 3 + [(None, None, 20)]


def test_window_recast_of_a_chunked_model_slides():
    scout = get_preset("llama-4-scout")
    assert not recast(scout, "window:4096").chunked and "window(4096)" in recast(scout, "window:4096").kind_label
    assert not recast(scout, "gqa:kv_heads=4,window=1024,global_every=4").chunked
    assert recast(scout, "mla").chunked and recast(scout, "native").chunked  # the model's own layers stay chunked


def test_profile_a_chunked_model(tmp_path, run_cli):
    path = tmp_path / "tiny-llama4.json"
    path.write_text(json.dumps(TINY_LLAMA4))
    code, out, err = run_cli("profile", "-m", str(path), "--device", "cpu", "--repeats", "1", "--json",
                             "-c", "16,24", "-b", "1,2")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 4 and {row["attention_kind"] for row in rows} == {"gqa(kv_heads=2) chunked(8)/global"}
    for row in rows:
        assert row["status"] == "ok"
        assert row["cache_bytes_measured"] == row["cache_bytes_estimate"]
        assert row["prefill_flops_counted_measured"] == row["prefill_flops_counted_estimate"]
        assert row["decode_flops_measured"] == row["decode_flops_estimate"]  # contexts of whole chunks


# --- the GPU kernels ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@every_model
def test_cuda_kernels_attend_within_chunks(name):
    # On CUDA, prefill runs FlexAttention under the chunk block mask (power-of-two head widths; DSA its Triton
    # kernels, in pieces that end at chunk ends) and decode the Triton kernels (MLA, TPA, DSA) up to the token's
    # offset in its chunk; 300 tokens of chunk 128 (FlexAttention's block), then 100 decode steps past a chunk start.
    desc = replace(MODELS[name], layer_windows=tuple(128 if w else None for w in MODELS[name].layer_windows))
    net = build(desc, max_batch=2, max_context=400, dtype=torch.float32, kv_dtype="fp32", device="cuda")
    toks = tokens(2, 400).cuda()
    reference = net.forward(toks)
    out = [net.prefill(toks[:, :300])]
    for pos in range(300, 400):
        out.append(net.decode(toks[:, pos:pos + 1], torch.tensor([pos], device="cuda")))
    torch.testing.assert_close(torch.stack(out, dim=1), reference[:, 299:], rtol=1e-3, atol=1e-3)
    # The same prefill through the PyTorch reference path (one causal call per chunk).
    from kvplan.models import flex_prefill, triton_decode

    flex_prefill.ENABLED = triton_decode.ENABLED = False
    try:
        torch.testing.assert_close(net.forward(toks), reference, rtol=1e-3, atol=1e-3)
    finally:
        flex_prefill.ENABLED = triton_decode.ENABLED = True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chunked_decode_in_a_cuda_graph_crosses_chunk_starts():
    desc = MODELS["dense"]
    net = build(desc, max_batch=2, max_context=40, dtype=torch.float32, kv_dtype="fp32", device="cuda")
    toks = tokens(2, 40).cuda()
    reference = net.forward(toks)
    net.prefill(toks[:, :5])
    graph, static_tok, static_pos, static_out = decode_graph(net, toks[:, 5:6], torch.tensor([5], device="cuda"))
    for pos in range(5, 40):  # chunk starts at 8, 16, 24, 32: the chunk offset is computed on the device
        static_tok.copy_(toks[:, pos:pos + 1])
        static_pos.fill_(pos)
        graph.replay()
        torch.testing.assert_close(static_out, reference[:, pos], rtol=1e-4, atol=1e-4)
