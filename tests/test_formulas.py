"""Every attention kind's cache and FLOP formulas against numbers worked out by hand here.

Each expected value is written as the arithmetic that produces it, from the published config values
(see kvplan/presets.py for their sources), so a reader can check it without running kvplan.
"""

import pytest

import kvplan
from kvplan.units import InputError
from kvplan.api import estimators
from kvplan.kinds import keys_attended_sum
from kvplan.presets import get_preset

K = 1024
BF16, FP8 = 2, 1  # bytes per element


def est(model, **options):
    """The one Estimator for a preset (or a re-cast of it) on an H100 unless told otherwise."""
    (estimator,) = estimators(model, **options)
    return estimator


def causal_pairs(n):
    """Sum over queries 0..n-1 of (i + 1) keys."""
    return n * (n + 1) // 2


def windowed_pairs(n, w):
    """Sum over queries 0..n-1 of min(i + 1, w) keys: a triangle up to w, then w keys per query."""
    return causal_pairs(n) if n <= w else w * (w + 1) // 2 + (n - w) * w


# --- cache per token ------------------------------------------------------------------------------------

def test_gqa_llama_8b_cache_per_token():
    # 32 layers x 2 (K and V) x 8 KV heads x 128 head_dim x 2 bytes
    assert est("llama-3.1-8b").kv_bytes_per_token == 32 * 2 * 8 * 128 * BF16 == 131072


def test_mha_and_mqa_recasts_of_llama_8b():
    # MHA keeps K and V for all 32 heads; MQA for one head shared by all.
    assert est("llama-3.1-8b", attention="mha").kv_bytes_per_token == 32 * 2 * 32 * 128 * BF16
    assert est("llama-3.1-8b", attention="mqa").kv_bytes_per_token == 32 * 2 * 1 * 128 * BF16
    assert est("llama-3.1-8b", attention="gqa:kv_heads=4").kv_bytes_per_token == 32 * 2 * 4 * 128 * BF16


def test_mla_deepseek_v3_cache_per_token():
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes = 70,272 bytes: the latent plus one RoPE key.
    assert est("deepseek-v3").kv_bytes_per_token == 61 * (512 + 64) * BF16 == 70272


def test_tpa_t6_medium_cache_per_token():
    # TPA caches A_K, A_V (rank x heads) and B_K, B_V (rank x head_dim): (R_K + R_V)(h + d_h) elements.
    # t6-medium: 24 layers, h = 47, d_h = 64, R_K = R_V = 2.
    assert est("t6-medium").kv_bytes_per_token == 24 * (2 + 2) * (47 + 64) * BF16 == 21312


def test_tpa_recast_uses_the_models_heads_and_head_dim():
    # llama-3.1-8b as TPA with k_rank = v_rank = 1: 32 layers x (1 + 1)(32 + 128) x 2 bytes.
    assert est("llama-3.1-8b", attention="tpa:k_rank=1,v_rank=1").kv_bytes_per_token == 32 * 2 * (32 + 128) * BF16


def test_dsa_deepseek_v32_cache_per_token():
    # MLA's 576 elements in bf16, plus the indexer key: 128 fp8 bytes and one 4-byte fp32 scale per 128.
    per_layer = (512 + 64) * BF16 + 128 * FP8 + 4
    assert est("deepseek-v3.2-exp").kv_bytes_per_token == 61 * per_layer == 61 * 1284


def test_dsa_indexer_key_stays_fp8_whatever_the_kv_dtype():
    # With an fp8 cache the latent halves but the indexer key (already fp8 + scale) does not.
    assert est("deepseek-v3.2-exp", kv_dtype="fp8").kv_bytes_per_token == 61 * ((512 + 64) * FP8 + 128 + 4)


# --- quantized caches: scale overhead -------------------------------------------------------------------

def test_int8_scale_overhead():
    # int8: one byte per element plus a 2-byte fp16 scale per 64 elements. A 128-element head vector takes
    # 128 + (128 / 64) x 2 = 132 bytes; llama-3.1-8b caches 2 x 8 such vectors per layer.
    assert est("llama-3.1-8b", kv_dtype="int8").kv_bytes_per_token == 32 * 2 * 8 * (128 + 2 * 2)
    # MLA: latent 512 -> 512 + 8 x 2 = 528 bytes; RoPE key 64 -> 64 + 1 x 2 = 66 bytes.
    assert est("deepseek-v3", kv_dtype="int8").kv_bytes_per_token == 61 * ((512 + 8 * 2) + (64 + 1 * 2))


def test_int4_scale_overhead():
    # int4: half a byte per element plus a 2-byte scale and a 2-byte zero point per 32 elements:
    # 128 elements -> 64 + (128 / 32) x 4 = 80 bytes.
    assert est("llama-3.1-8b", kv_dtype="int4").kv_bytes_per_token == 32 * 2 * 8 * (128 // 2 + 4 * 4)
    # A group that is not full still carries its scale: TPA A factors have 47 elements -> 24 bytes
    # (23.5 rounded up) + 2 groups x 4 = 32; B factors 64 elements -> 32 + 2 x 4 = 40.
    assert est("t6-medium", kv_dtype="int4").kv_bytes_per_token == 24 * 4 * ((24 + 2 * 4) + (32 + 2 * 4))


# --- windows and local/global mixes ---------------------------------------------------------------------

def test_mistral_sliding_window_caps_the_cache():
    per_token_layer = 2 * 8 * 128 * BF16  # 4096 bytes
    e = est("mistral-7b-v0.1")
    assert e.kv_cache_bytes(1, 2 * K) == 32 * per_token_layer * 2 * K  # below the window: every token
    assert e.kv_cache_bytes(1, 32 * K) == 32 * per_token_layer * 4096  # above: the 4096 most recent
    assert e.kv_cache_bytes(3, 32 * K) == 3 * 32 * per_token_layer * 4096


def test_gemma3_five_local_to_one_global():
    # 62 layers; every 6th is global (layers 6, 12, ..., 60 counting from 1): 10 global, 52 local with w = 1024.
    m = get_preset("gemma-3-27b")
    assert m.layer_windows.count(None) == 10 and m.layer_windows.count(1024) == 52
    per_token_layer = 2 * 16 * 128 * BF16  # 8192 bytes
    assert est("gemma-3-27b").kv_cache_bytes(1, 128 * K) == per_token_layer * (10 * 128 * K + 52 * 1024)


def test_modernbert_global_every_third_layer():
    # 22 layers, global at 0, 3, ..., 21 -> 8 global; 14 local with a 128-token window; 12 heads of 64.
    m = get_preset("modernbert-base")
    assert [i for i, w in enumerate(m.layer_windows) if w is None] == [0, 3, 6, 9, 12, 15, 18, 21]
    per_token_layer = 2 * 12 * 64 * BF16  # 3072 bytes
    assert est("modernbert-base").kv_cache_bytes(1, 8 * K) == per_token_layer * (8 * 8 * K + 14 * 128)


def test_window_recast_with_global_layers():
    # window:size=4096,global_every=4 on 32 layers: layers 4, 8, ..., 32 (from 1) global -> 8 global, 24 local.
    e = est("llama-3.1-8b", attention="window:size=4096,global_every=4")
    assert e.kv_cache_bytes(1, 64 * K) == 2 * 8 * 128 * BF16 * (8 * 64 * K + 24 * 4096)


# --- paged allocation -----------------------------------------------------------------------------------

def test_paged_blocks_round_up_to_whole_pages():
    # 1000 tokens in 16-token pages: ceil(1000 / 16) = 63 pages = 1008 token slots.
    e = est("llama-3.1-8b", block_size=16)
    assert e.kv_cache_bytes(1, 1000) == 131072 * 1008


def test_paged_window_holds_one_extra_page():
    # A 4096-token window sliding over 16-token pages spans 4096/16 + 1 = 257 pages once the context passes it,
    # but never more pages than the context itself needs.
    e = est("mistral-7b-v0.1", block_size=16)
    per_token = 32 * 2 * 8 * 128 * BF16
    assert e.kv_cache_bytes(1, 10000) == per_token * 257 * 16
    # 4100 tokens fill 256 pages and start a 257th (4100 = 256 x 16 + 4): the window's 257 pages, no more.
    assert e.kv_cache_bytes(1, 4100) == per_token * 257 * 16
    assert e.kv_cache_bytes(1, 4000) == per_token * 4000  # 250 full pages, below the window


# --- tensor and pipeline parallelism --------------------------------------------------------------------

def test_tp_splits_kv_heads():
    # 8 KV heads over 8 GPUs: one K and one V head each (512 bytes per token per layer); nothing replicated.
    e = est("llama-3.1-8b", gpus=8)
    assert e.kv_cache_bytes_per_gpu(1, 4 * K) == 32 * 2 * 1 * 128 * BF16 * 4 * K
    assert e.kv_cache_bytes(1, 4 * K) == 8 * e.kv_cache_bytes_per_gpu(1, 4 * K) == 32 * 2 * 8 * 128 * BF16 * 4 * K


def test_tp_beyond_kv_heads_replicates():
    # 16 GPUs for 8 KV heads: each GPU still holds a whole head, so the deployment holds every head twice.
    e = est("llama-3.1-8b", gpus=16)
    assert e.kv_cache_bytes_per_gpu(1, 4 * K) == 32 * 2 * 1 * 128 * BF16 * 4 * K
    assert e.kv_cache_bytes(1, 4 * K) == 16 * 32 * 2 * 1 * 128 * BF16 * 4 * K


def test_tp_replicates_mqa_and_mla():
    mqa = est("llama-3.1-8b", attention="mqa", gpus=4)
    assert mqa.kv_cache_bytes_per_gpu(1, K) == 32 * 2 * 128 * BF16 * K  # the one K/V head on every GPU
    assert mqa.kv_cache_bytes(1, K) == 4 * 32 * 2 * 128 * BF16 * K
    mla = est("deepseek-v3", gpus=8)
    assert mla.kv_cache_bytes_per_gpu(1, K) == 61 * (512 + 64) * BF16 * K  # the latent is shared by all heads
    assert mla.kv_cache_bytes(1, K) == 8 * 61 * (512 + 64) * BF16 * K
    dsa = est("deepseek-v3.2-exp", gpus=8)
    assert dsa.kv_cache_bytes_per_gpu(1, K) == 61 * ((512 + 64) * BF16 + 128 + 4) * K


def test_tp_splits_tpa_a_factors_and_replicates_b():
    # t6-medium over 2 GPUs: A factors for ceil(47 / 2) = 24 heads each, B factors (64 wide) whole on both.
    e = est("t6-medium", gpus=2)
    per_gpu_layer = (2 + 2) * (24 + 64) * BF16
    assert e.kv_cache_bytes_per_gpu(1, K) == 24 * per_gpu_layer * K
    assert e.kv_cache_bytes(1, K) == 2 * 24 * per_gpu_layer * K


def test_pipeline_stages_hold_their_layers_share():
    # 32 layers in 3 stages of ceil(32 / 3) = 11, 11, 10: the busiest GPU holds 11 layers of cache.
    e = est("llama-3.1-8b", gpus=3, pp=3)
    assert e.kv_cache_bytes_per_gpu(2, 8 * K) == 2 * 11 * 2 * 8 * 128 * BF16 * 8 * K
    assert e.kv_cache_bytes(2, 8 * K) == 2 * 32 * 2 * 8 * 128 * BF16 * 8 * K
    # Weights per layer: attention 4096 x (4096 + 2 x 1024) + 4096 x 4096, SwiGLU 3 x 4096 x 14336, two norms
    # 2 x 4096. The first stage also holds the embedding (128256 x 4096), the last the final norm and LM head:
    # the first (11 layers + embedding) is the busiest.
    layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096
    embedding = 128256 * 4096
    assert e.weights_bytes_per_gpu == (11 * layer + embedding) * BF16
    assert (11 * layer + embedding) > (10 * layer + 4096 + embedding)


def test_pipeline_stage_of_gemma3_with_most_global_layers():
    # 62 layers in 4 stages of 16: globals (0-based 5, 11 | 17, 23, 29 | 35, 41, 47 | 53, 59).
    # The busiest stage at long context holds 3 global and 13 local layers.
    e = est("gemma-3-27b", gpus=4, pp=4)
    assert e.kv_cache_bytes_per_gpu(1, 128 * K) == 2 * 16 * 128 * BF16 * (3 * 128 * K + 13 * 1024)


# --- prefill attention FLOPs ----------------------------------------------------------------------------

def test_keys_attended_sum_closed_forms():
    assert keys_attended_sum(4096, None) == causal_pairs(4096) == 4096 * 4097 // 2
    assert keys_attended_sum(10_000, 4096) == windowed_pairs(10_000, 4096) == 4096 * 4097 // 2 + (10_000 - 4096) * 4096
    assert keys_attended_sum(100, 30, start=50) == sum(min(i + 1, 30) for i in range(50, 150))


def test_prefill_attention_causal_dense():
    # QK^T and PV: 2 x 2 FLOPs per head dim per (query, key) pair, 32 heads of 128, 32 layers, causal pairs.
    e = est("llama-3.1-8b")
    assert e.prefill_attention_flops(2, 4096) == 2 * 32 * (4 * 32 * 128) * causal_pairs(4096)


def test_prefill_attention_sliding_window():
    e = est("mistral-7b-v0.1")
    assert e.prefill_attention_flops(1, 8192) == 32 * (4 * 32 * 128) * windowed_pairs(8192, 4096)


def test_prefill_attention_gemma3_local_global():
    e = est("gemma-3-27b")
    pair = 4 * 32 * 128
    assert e.prefill_attention_flops(1, 32 * K) == pair * (10 * causal_pairs(32 * K) + 52 * windowed_pairs(32 * K, 1024))


def test_prefill_attention_mla_decompressed():
    # Prefill decompresses: QK^T over qk_head_dim 128 + 64 = 192, PV over v_head_dim 128, 128 heads.
    e = est("deepseek-v3")
    pair = 2 * 128 * 192 + 2 * 128 * 128
    assert e.prefill_attention_flops(1, 4096) == 61 * pair * causal_pairs(4096)


def test_prefill_attention_tpa_includes_factor_products():
    # Pairs as MHA over rebuilt Q, K, V (4 h d_h each), plus rebuilding Q, K, V from R = 6 + 2 + 2 factor pairs:
    # 2 R h d_h per token per layer.
    e = est("t6-medium")
    h, d_h = 47, 64
    assert e.prefill_attention_flops(1, 1024) == 24 * (4 * h * d_h * causal_pairs(1024) + 2 * 10 * h * d_h * 1024)


def test_prefill_attention_dsa_topk_and_indexer():
    # Each query attends min(i + 1, 2048) latents in MLA's absorbed form:
    #   scores over [latent 512, rope 64] and values over the latent: 2 h 576 + 2 h 512 FLOPs per pair, h = 128.
    # The indexer scores every previous key: 64 heads x 128 dims (2 FLOPs each) plus a weighted sum over heads.
    e = est("deepseek-v3.2-exp")
    n = 8192
    attention = (2 * 128 * 576 + 2 * 128 * 512) * windowed_pairs(n, 2048)
    indexer = (2 * 64 * 128 + 2 * 64) * causal_pairs(n)
    assert e.prefill_attention_flops(1, n) == 61 * (attention + indexer)


def test_chunked_prefill_adds_up():
    # Prefill of 6000 tokens = prefill of 4000 + 2000 more onto 4000 cached (same pairs, split in two).
    e = est("gemma-3-27b")
    assert e.prefill_attention_flops(1, 6000) == e.prefill_attention_flops(1, 4000) + e.prefill_attention_flops(1, 2000, 4000)


def test_prefill_linear_flops_and_lm_head():
    # Every weight a token passes through, 2 FLOPs each; the LM head only for the last prompt token.
    per_layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336  # q, k, v, o + gate, up, down
    lm_head = 128256 * 4096
    e = est("llama-3.1-8b")
    assert e.prefill_linear_flops(2, 1000) == 2 * (1000 * 2 * 32 * per_layer + 2 * lm_head)


# --- decode FLOPs at a position -------------------------------------------------------------------------

LLAMA_8B_LINEAR = 32 * (4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336)
LLAMA_8B_LM_HEAD = 128256 * 4096


def test_decode_flops_dense():
    # The token at 0-based position p attends p + 1 keys.
    e = est("llama-3.1-8b")
    p = 128 * K - 1
    assert e.decode_flops_per_token(p) == 2 * LLAMA_8B_LINEAR + 2 * LLAMA_8B_LM_HEAD + 32 * 4 * 32 * 128 * (p + 1)


def test_decode_flops_window_stops_growing():
    e = est("mistral-7b-v0.1")
    assert e.decode_attention_flops(100_000) == e.decode_attention_flops(4095) == 32 * 4 * 32 * 128 * 4096


def test_decode_flops_mla_absorbed():
    # Absorbed MLA: scores against 576-wide cached rows, values as the 512-wide latent, 128 heads.
    e = est("deepseek-v3")
    assert e.decode_attention_flops(9999) == 61 * (2 * 128 * 576 + 2 * 128 * 512) * 10_000


def test_decode_flops_tpa_factorized():
    # t6-medium decodes in the FlashTPA order (R_Q (h + d_h) = 6 x 111 < h d_h = 47 x 64): per key B_Q . B_K
    # for 6 x 2 rank pairs (2 x 12 x 64), mixed into 47 heads by A_Q (2 x 47 x 12), P weighted by A_V (not a
    # matrix product: not counted) and contracted with B_V per V rank (2 x 47 x 2 x 64); no per-token term.
    e = est("t6-medium")
    h, d_h = 47, 64
    flash = 2 * 6 * 2 * d_h + 2 * h * 6 * 2 + 2 * h * 2 * d_h
    assert e.model.attention.decode_order == "flash"
    assert e.decode_attention_flops(999) == 24 * flash * 1000
    # The rebuild order costs 2 h R_K d_h per key for q . B_K (1.6x the flash order here) plus 2 R_Q h d_h per
    # token to rebuild q; it is the order run once R_Q (h + d_h) >= h d_h, e.g. at R_Q = 28.
    rebuild = 2 * h * 2 * d_h + 2 * h * 2 * d_h
    assert e.model.attention.decode_pair_flops("rebuild") == rebuild and round(rebuild / flash, 2) == 1.64
    wide = est("t6-medium", attention="tpa:q_rank=28")
    assert wide.model.attention.decode_order == "rebuild"
    assert wide.decode_attention_flops(999) == 24 * (rebuild * 1000 + 2 * 28 * h * d_h)


def test_decode_flops_dsa_topk_and_indexer():
    e = est("deepseek-v3.2-exp")
    p = 100_000
    per_layer = (2 * 128 * 576 + 2 * 128 * 512) * 2048 + (2 * 64 * 128 + 2 * 64) * (p + 1)
    assert e.decode_attention_flops(p) == 61 * per_layer


# --- parameters: dense and MoE --------------------------------------------------------------------------

def test_llama_8b_parameter_count_matches_the_published_8_030_261_248():
    # Embedding and untied LM head, 32 x (attention + SwiGLU + 2 norms), final norm.
    by_hand = 2 * 128256 * 4096 + LLAMA_8B_LINEAR + 32 * 2 * 4096 + 4096
    assert get_preset("llama-3.1-8b").total_params() == by_hand == 8_030_261_248


def test_deepseek_v3_total_and_active_parameters():
    d, h = 7168, 128
    attention = (d * 1536 + 1536 * h * (128 + 64)  # q down, q up (nope + rope)
                 + d * (512 + 64)  # kv down: latent and shared RoPE key
                 + 512 * h * (128 + 128)  # kv up: nope keys and values
                 + h * 128 * d  # output
                 + 512 + 1536)  # latent norms
    expert = 3 * d * 2048
    moe_layer = (256 + 1) * expert + d * 256  # routed and shared experts, router
    dense_layer = 3 * d * 18432
    norms = (2 * 61 + 1) * d
    total = 2 * 129280 * d + 61 * attention + 3 * dense_layer + 58 * moe_layer + norms
    m = get_preset("deepseek-v3")
    assert m.total_params() == total
    assert total == pytest.approx(671e9, rel=0.001)  # the report's 671B (MTP module excluded)
    # Active: 8 routed + 1 shared expert and the router per MoE layer.
    active_moe = (8 + 1) * expert + d * 256
    linear_attention = attention - 512 - 1536
    assert m.active_linear_params_per_token() == 61 * linear_attention + 3 * dense_layer + 58 * active_moe


# --- latency and cost -----------------------------------------------------------------------------------

# The H100 SXM preset's kernels (kvplan.hardware.KERNELS, fitted to aiconfigurator's vLLM tables):
PEAK, HBM = 989.4e12, 3.35e12
GEMM_C, GEMM_B, GEMM_CALL = 0.794, 0.860, 3.2e-6  # bf16 GEMM: compute, bandwidth, seconds per call
ATTN_C, ATTN_HALF = 0.779, 2159  # prefill attention at 128-wide heads: e(L) = 0.779 L / (L + 2159)
DECODE_B, DECODE_CALL = 0.860, 11.0e-6
ELEM_B, ELEM_CALL = 0.8, 3e-6
LLAMA_8B_WEIGHTS = 8_030_261_248
LLAMA_8B_ELEMENTWISE = BF16 * (10 * 4096 + 3 * 14336)  # bytes per token per layer: norms, adds, activation


def test_decode_roofline_per_operation_by_hand():
    # One sequence, 32k context on an H100 SXM: every operation streams its bytes.
    row = est("llama-3.1-8b").row(1, 32 * K)
    lm_head = LLAMA_8B_LM_HEAD * BF16
    # Dense GEMMs read every weight but the LM head and the untied embedding's rows other than the one looked up.
    dense = LLAMA_8B_WEIGHTS * BF16 - (128256 - 1) * 4096 * BF16 - lm_head
    gemm = 4 * 32 * GEMM_CALL + max(2 * LLAMA_8B_LINEAR / (PEAK * GEMM_C), dense / (HBM * GEMM_B))
    cache = 131072 * 32 * K
    attention = 32 * DECODE_CALL + max(32 * 4 * 32 * 128 * 32 * K / (PEAK * ATTN_C), cache / (HBM * DECODE_B))
    elementwise = 4 * 32 * ELEM_CALL + 32 * LLAMA_8B_ELEMENTWISE / (HBM * ELEM_B)
    logits = GEMM_CALL + max(2 * LLAMA_8B_LM_HEAD / (PEAK * GEMM_C), (lm_head + 128256 * 4) / (HBM * GEMM_B))
    assert row["decode_gemm_seconds"] == pytest.approx(gemm, rel=1e-12)
    assert row["decode_attention_seconds"] == pytest.approx(attention, rel=1e-12)
    assert row["decode_elementwise_seconds"] == pytest.approx(elementwise, rel=1e-12)
    assert row["decode_logits_seconds"] == pytest.approx(logits, rel=1e-12)
    assert row["decode_moe_seconds"] == row["decode_indexer_seconds"] == row["decode_communication_seconds"] == 0
    seconds = gemm + attention + elementwise + logits
    assert row["decode_seconds_per_token"] == pytest.approx(seconds, rel=1e-12)
    assert row["decode_usd_per_mtok"] == pytest.approx(2.99 / 3600 * seconds * 1e6, rel=1e-12)


def test_prefill_roofline_per_operation_by_hand():
    e = est("llama-3.1-8b")
    row = e.row(1, 32 * K)
    attention_flops = 32 * 4 * 32 * 128 * causal_pairs(32 * K)
    flops = 2 * (32 * K * LLAMA_8B_LINEAR + LLAMA_8B_LM_HEAD) + attention_flops
    assert row["prefill_flops"] == flops
    # Chunked prefill (8192 tokens per forward): 4 forwards, each compute bound, each paying its calls.
    gemm = 4 * 4 * 32 * GEMM_CALL + 2 * 32 * K * LLAMA_8B_LINEAR / (PEAK * GEMM_C)
    efficiency = ATTN_C * 32 * K / (32 * K + ATTN_HALF)  # 128-wide heads: no head-shape factor
    attention = attention_flops / (PEAK * efficiency)
    elementwise = 4 * 4 * 32 * ELEM_CALL + 32 * K * 32 * LLAMA_8B_ELEMENTWISE / (HBM * ELEM_B)
    lm_head = LLAMA_8B_LM_HEAD * BF16
    logits = GEMM_CALL + max(2 * LLAMA_8B_LM_HEAD / (PEAK * GEMM_C), (lm_head + 128256 * 4) / (HBM * GEMM_B))
    for name, seconds in (("gemm", gemm), ("attention", attention), ("elementwise", elementwise), ("logits", logits)):
        assert row[f"prefill_{name}_seconds"] == pytest.approx(seconds, rel=1e-12), name
    seconds = gemm + attention + elementwise + logits
    assert row["prefill_seconds"] == pytest.approx(seconds, rel=1e-12)
    assert row["prefill_usd_per_mtok"] == pytest.approx(2.99 / 3600 * seconds / (32 * K) * 1e6, rel=1e-12)


def test_chunked_prefill_reads_the_weights_and_pays_the_calls_of_every_forward():
    # llama-3.1-8b on an H100, a 1024-token prompt in chunks of 256: 4 forwards, each streaming every dense
    # weight (256 tokens of GEMMs take less time than reading the weights); whole (no chunks): one forward,
    # compute bound. Attention keeps the whole prompt's work.
    chunked, whole = est("llama-3.1-8b", prefill_chunk=256).row(1, K), est("llama-3.1-8b", prefill_chunk=0).row(1, K)
    dense = LLAMA_8B_WEIGHTS * BF16 - 128256 * 4096 * BF16 - LLAMA_8B_LM_HEAD * BF16  # 256 rows of 128256 looked up
    dense += 256 * 4096 * BF16
    per_forward = max(2 * 256 * LLAMA_8B_LINEAR / (PEAK * GEMM_C), dense / (HBM * GEMM_B))
    assert per_forward == dense / (HBM * GEMM_B)
    assert chunked["prefill_gemm_seconds"] == pytest.approx(4 * (4 * 32 * GEMM_CALL + per_forward), rel=1e-12)
    assert whole["prefill_gemm_seconds"] == pytest.approx(4 * 32 * GEMM_CALL + 2 * K * LLAMA_8B_LINEAR / (PEAK * GEMM_C),
                                                          rel=1e-12)
    elementwise = 4 * 4 * 32 * ELEM_CALL + K * 32 * LLAMA_8B_ELEMENTWISE / (HBM * ELEM_B)
    assert chunked["prefill_elementwise_seconds"] == pytest.approx(elementwise, rel=1e-12)
    assert chunked["prefill_attention_seconds"] == whole["prefill_attention_seconds"]  # no call time (dense)
    assert chunked["prefill_logits_seconds"] == whole["prefill_logits_seconds"]  # the last token's alone
    assert est("llama-3.1-8b", prefill_chunk=K).row(1, K)["prefill_seconds"] == whole["prefill_seconds"]


@pytest.mark.parametrize("attention", ["window:4096", "window:size=1024,global_every=2", "native"])
def test_windowed_prefill_reads_the_attention_curve_at_twice_its_keys_per_query(attention):
    # The flash curve e(L) is stated for causal attention over L keys (L/2 keys per query on average): a layer
    # group whose queries attend n keys on average reads it at min(2 n, context), and groups combine as the
    # pair-weighted harmonic mean of their L. llama-3.1-8b, one 32k prompt in one forward, 32 heads x 128.
    T = 32 * K
    estimator = est("llama-3.1-8b", attention=attention, prefill_chunk=0)
    kernels = estimator.deployment.gpu.kernel_figures
    groups = {"window:4096": [(32, 4096)], "native": [(32, None)],
              "window:size=1024,global_every=2": [(16, 1024), (16, None)]}[attention]
    pairs = {w: n * (windowed_pairs(T, w) if w else causal_pairs(T)) for n, w in groups}
    reach = {w: min(T, 2 * pairs[w] / (n * T)) for n, w in groups}
    L = sum(pairs.values()) / sum(pairs[w] / reach[w] for w in pairs)
    flops = sum(pairs.values()) * 2 * 2 * 32 * 128  # scores and values, 32 heads of 128
    expected = 32 * kernels.prefill_attention.call_seconds + flops / (
        989.4e12 * kernels.attention_efficiency(L, 128))
    assert estimator.row(1, T)["prefill_attention_seconds"] == pytest.approx(expected, rel=1e-9)
    if attention == "native":
        assert L == T


def test_mla_attention_by_hand():
    # deepseek-v3 on 8 H200s (tp 8: 16 of 128 heads per GPU), fp8: a 4k prompt in one forward, then one decode
    # step. MLA's kernels (vLLM's MLA block less its projections, aiconfigurator's H200 tables): prefill
    # e(L) = 0.936 L / (L + 11932) of bf16 peak + 87.1 us per layer; decode 81.1 us per layer + the latent
    # (576 values x 2 bytes per token, every GPU holds it all) at 0.881 of 4.8 TB/s, or its FLOPs at 0.759.
    row = est("deepseek-v3", gpu="h200", gpus=8, weight_dtype="fp8").row(1, 4 * K + 1, 4 * K)
    pairs = causal_pairs(4 * K)
    flops = 61 * (2 * 16 * 192 + 2 * 16 * 128) * pairs  # per GPU: decompressed 192-wide keys, 128-wide values
    prefill = 61 * 87.1e-6 + flops / (989.4e12 * 0.936 * 4 * K / (4 * K + 11932))
    assert row["prefill_attention_seconds"] == pytest.approx(prefill, rel=1e-12)
    keys = 4 * K + 1
    decode_flops = 61 * (2 * 16 * 576 + 2 * 16 * 512) * keys  # absorbed: scores and values over the latent
    decode = 61 * 81.1e-6 + max(decode_flops / (989.4e12 * 0.759), 61 * keys * 576 * BF16 / (4.8e12 * 0.881))
    assert row["decode_attention_seconds"] == pytest.approx(decode, rel=1e-12)


def test_fp8_weights_run_linear_layers_at_the_fp8_rate():
    # fp8 weights on an H100: dense GEMMs at 1978.9 TFLOP/s x 0.532 (the fp8 GEMM kernel), attention at bf16's.
    row = est("llama-3.1-8b", weight_dtype="fp8").row(1, 32 * K)  # 4 forwards of 8192 tokens
    assert row["prefill_gemm_seconds"] == pytest.approx(4 * 4 * 32 * 5.9e-6 + 2 * 32 * K * LLAMA_8B_LINEAR / (1978.9e12 * 0.532),
                                                        rel=1e-12)
    # An A100 has no fp8 units: its fp8 weights multiply at its bf16 GEMM's rate (0.910 of 312 TFLOP/s).
    a100 = est("llama-3.1-8b", gpu="a100-80gb", weight_dtype="fp8").row(1, 32 * K)
    assert a100["prefill_gemm_seconds"] == pytest.approx(4 * 4 * 32 * 4.4e-6 + 2 * 32 * K * LLAMA_8B_LINEAR / (312e12 * 0.910),
                                                         rel=1e-12)


def test_dsa_prefill_prices_indexer_topk_and_latent_reads():
    # deepseek-v3.2-exp on 8 H100s at 8k: the indexer (64 heads x 128, fp8) scores every visible key on every
    # tp rank; top-k reads 4 bytes per score; each query reads min(position + 1, 2048) latent rows of 576 x 2 bytes.
    # Both run once per 1024-query chunk and layer (8 chunks), as the 78 us top-k call was fitted (one call over
    # 1024 queries).
    row = est("deepseek-v3.2-exp", gpus=8).row(1, 8 * K)
    scores = 61 * causal_pairs(8 * K)
    indexer = 61 * 8 * 0.0 + scores * (2 * 64 * 128 + 2 * 64) / (1978.9e12 * 0.319)
    topk = 61 * 8 * 78e-6 + scores * 4 / (HBM * 0.140)
    assert row["prefill_indexer_seconds"] == pytest.approx(indexer + topk, rel=1e-12)
    # Chunked prefill: each forward's own query chunks. 2048-token forwards: 4 x 2 = the same 8 calls a layer;
    # 512-token forwards: 16 forwards of one call; 1536: 5 forwards of 2 calls and a last 512-token one, 11.
    for chunk, calls in ((2048, 8), (512, 16), (1536, 11)):
        chunked = est("deepseek-v3.2-exp", gpus=8, prefill_chunk=chunk).row(1, 8 * K)
        assert chunked["prefill_indexer_seconds"] == pytest.approx(indexer + topk + 61 * (calls - 8) * 78e-6,
                                                                   rel=1e-12)
    # The sparse kernel: its latent row reads at 0.898 of HBM (every tp rank reads all of them), or its 16 heads'
    # absorbed FLOPs per GPU (scores over 576, values over 512) at 0.399 of peak, whichever binds: at 16 heads the
    # reads, at 128 heads on one GPU the FLOPs.
    pairs = 61 * keys_attended_sum(8 * K, 2048)
    latent_reads = pairs * 576 * BF16 / (HBM * 0.898)
    assert row["prefill_attention_seconds"] == pytest.approx(latent_reads, rel=1e-12)
    assert latent_reads > pairs * 16 * 2 * (576 + 512) / (PEAK * 0.399)
    one_gpu = est("deepseek-v3.2-exp").row(1, 8 * K)
    assert one_gpu["prefill_attention_seconds"] == pytest.approx(pairs * 128 * 2 * (576 + 512) / (PEAK * 0.399),
                                                                 rel=1e-12)


def test_naive_attention_score_matrix_is_quadratic():
    # Naive attention adds one layer's scores and probabilities: 2 x heads x L^2 elements of 2 bytes.
    flash, naive = est("llama-3.1-8b", prefill_chunk=0), est("llama-3.1-8b", flash=False, prefill_chunk=0)
    for length in (4 * K, 32 * K):
        extra = naive.activation_bytes_per_gpu(1, length) - flash.activation_bytes_per_gpu(1, length)
        # The scores live in the attention phase (q, k, v, rotated q and k, output: 3 x 32 x 128 + 3 x 8 x 128
        # per token), which then outgrows the feed-forward phase (3 x 14336): the peak moves from one phase to
        # the other, both on top of 2 x 4096 for the residual stream and normed input.
        attention_phase = (2 * 4096 + 3 * 32 * 128 + 3 * 8 * 128) * BF16 * length + 2 * 32 * length * length * BF16
        ffn_phase = (2 * 4096 + 3 * 14336) * BF16 * length
        assert attention_phase > ffn_phase
        assert extra == attention_phase - ffn_phase


def test_rows_show_flash_and_naive_peaks_side_by_side():
    row = kvplan.estimate("llama-3.1-8b", context=32 * K)
    flash, naive = est("llama-3.1-8b"), est("llama-3.1-8b", flash=False)
    assert row["activation_bytes_flash_per_gpu"] == row["activation_bytes_per_gpu"] == flash.activation_bytes_per_gpu(1, 32 * K)
    assert row["activation_bytes_naive_per_gpu"] == naive.activation_bytes_per_gpu(1, 32 * K)


def test_whole_deployment_counts_weights_tensor_parallelism_replicates():
    # deepseek-v3 over 8 GPUs: every GPU holds the whole latent path (attention.params(d, tp)); the sum over
    # GPUs is 8 x the per-GPU weights (one pipeline stage), more than the model's own weight count.
    e = est("deepseek-v3", gpus=8, weight_dtype="bf16")
    model = get_preset("deepseek-v3")
    assert e.weights_bytes_all_gpus == 8 * model.stage_params(0, 61, 8) * BF16 == 8 * e.weights_bytes_per_gpu
    assert e.weights_bytes_all_gpus > e.weights_bytes
    row = e.row(1, 4 * K)
    # Each GPU's runtime reserve: 512 MiB of CUDA context + 392 MB of NCCL buffers (8 GPUs).
    reserve = 8 * (512 * 2**20 + 411041792)
    assert row["total_bytes"] == e.weights_bytes_all_gpus + row["kv_cache_bytes"] + row["activation_bytes"] + reserve


def test_byte_amounts_take_an_exponent():
    from kvplan.units import parse_bytes

    assert parse_bytes("24e9") == 24 * 10**9 and parse_bytes("80GiB") == 80 * 2**30


def test_encoders_attend_both_ways_and_decode_nothing():
    # modernbert-base at L = 8192: 22 layers, every third global (0, 3, ..., 21: 8 layers) attending all
    # 8192 x 8192 pairs; 14 local layers with 128-token windows attend 64 keys each side plus themselves,
    # fewer within 64 of either end: per layer L + 2 x (sum_{i=1..L-1} min(i, 64)) = L + 2 x (64 x 65 / 2
    # + (L - 1 - 64) x 64). Each pair costs 4 x 12 heads x 64 = 3072 FLOPs (QK^T and PV).
    L = 8 * K
    local_pairs = L + 2 * (64 * 65 // 2 + (L - 1 - 64) * 64)
    pairs = 8 * L * L + 14 * local_pairs
    e = est("modernbert-base")
    assert e.prefill_attention_flops(1, L) == 4 * 12 * 64 * pairs
    row = e.row(2, L)
    assert row["decode_seconds_per_token"] is None and row["decode_usd_per_mtok"] is None
    with pytest.raises(InputError, match="encoder"):
        e.decode_step(1, L)


def test_moe_grouped_gemm_by_hand():
    # deepseek-v3, fp8 weights on 8 H200s (tp 8, experts split over tp): a 4k prompt. Each of 58 MoE layers runs
    # 2 grouped GEMMs over its 256 experts, each 2048 / 8 = 256 wide per GPU: the H200's fp8 grouped GEMM (0.310
    # of peak at 2048 wide) scaled to e_max = 0.310 x (2048 + 372) / 2048, then by 256 / (256 + 372); 23.1 us
    # per call and the datasheet bandwidth (aiconfigurator's vLLM table at 1-32 tokens).
    from kvplan.parallel import experts_touched

    row = est("deepseek-v3", gpu="h200", gpus=8, weight_dtype="fp8").row(1, 4 * K, 4 * K)
    efficiency = 0.310 * (2048 + 372) / 2048 * 256 / (256 + 372)
    expert = 3 * 7168 * 2048  # fp8: one byte each
    flops = 4 * K * 58 * 8 * 2 * expert / 8
    read = 58 * experts_touched(256, 8, 4 * K) * expert / 8
    seconds = 2 * 58 * 23.1e-6 + max(flops / (1978.9e12 * efficiency), read / (4.8e12 * 1.0))
    assert row["prefill_moe_seconds"] == pytest.approx(seconds, rel=1e-12)
    # Decode of one sequence: its 8 experts' 256-wide slices streamed, and the two calls.
    step = est("deepseek-v3", gpu="h200", gpus=8, weight_dtype="fp8").row(1, 4 * K)
    decode = 2 * 58 * 23.1e-6 + 58 * 8 * expert / 8 / 4.8e12
    assert step["decode_moe_seconds"] == pytest.approx(decode, rel=1e-12)


def test_a_profile_without_mla_all_to_all_or_decode_topk_figures_prices_them_with_its_generic_ones():
    from kvplan.roofline import kernels_from_dict

    kernels = kernels_from_dict({"prefill_attention": {"compute": 0.5, "bandwidth": 0.7},
                                 "attention_half_tokens": 1000, "decode_attention": {"bandwidth": 0.8,
                                                                                      "call_seconds": 1e-5},
                                 "communication": {"bandwidth": 0.9, "call_seconds": 4e-6},
                                 "topk": {"bandwidth": 0.2, "call_seconds": 5e-5}})
    assert kernels.mla_prefill_attention == kernels.prefill_attention
    assert kernels.mla_half_tokens == 1000 and kernels.mla_attention_efficiency(1000) == 0.25
    assert kernels.mla_decode_attention == kernels.decode_attention
    assert kernels.all_to_all == kernels.communication
    assert kernels.decode_topk == kernels.topk


def test_dsa_decode_indexer_reads_its_keys_while_it_scores_them():
    # deepseek-v3.2-exp on 8 H100s, one sequence at 8k: each GPU's indexer scores 8192 cached keys per layer
    # (64 heads x 128, fp8, at 0.319 of 1978.9 TFLOP/s) while reading them (128 fp8 values + one fp32 scale, at
    # MLA decode's 0.869 of 3.35 TB/s): the larger of the two; then decode's top-k over the fp32 scores (one call
    # a layer, 23.6 us + the scores at 0.050 of 3.35 TB/s; prefill's top-k figures are not used).
    row = est("deepseek-v3.2-exp", gpus=8).row(1, 8 * K)
    keys = 61 * 8 * K
    scoring = max(keys * (2 * 64 * 128 + 2 * 64) / (1978.9e12 * 0.319), keys * (128 + 4) / (HBM * 0.869))
    assert row["decode_indexer_seconds"] == pytest.approx(scoring + 61 * 23.6e-6 + keys * 4 / (HBM * 0.050),
                                                      rel=1e-12)
