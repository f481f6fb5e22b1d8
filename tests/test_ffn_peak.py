"""The feed-forward's share of the prefill peak (FeedForward.prefill_peak_bytes) derived by hand, against the
tensors kvplan.models' MoE layer holds (kvplan.profilers.live), and a small Jamba-like model's whole prefill peak
on the CPU against Estimator.activation_bytes_per_gpu."""

import pytest
import torch

from kvplan.families import model_from_config
from kvplan.model import FeedForward
from kvplan.models import build
from kvplan.models.transformer import MoE
from kvplan.presets import get_preset
from kvplan.profilers.live import LiveBytes
from model_helpers import estimator

BF16, INT64 = 2, 8


def test_moe_layer_peak_by_hand():
    """Mixtral's shape (8 experts of 14336, top 2, d 4096) in bf16: each token's 2 weights and int64 ids
    (2 x (2 + 8)), the output accumulator (4096 x 2) and a quarter of the tokens at an expert: their gathered
    input, gate, up and product ((4096 + 3 x 14336) x 2) and int64 rows and slots (2 x 8). tp 2 halves the
    experts' width."""
    ffn = FeedForward(intermediate=14336, n_experts=8, n_active_experts=2, moe_intermediate=14336, n_dense_layers=0)
    choices = 2 * (BF16 + INT64)
    assert ffn.prefill_peak_bytes(4096, 32, 1, BF16, fused_moe=False) == choices + 4096 * BF16 + ((4096 + 3 * 14336) * BF16 + 16) / 4
    assert ffn.prefill_peak_bytes(4096, 32, 2, BF16, fused_moe=False) == choices + 4096 * BF16 + ((4096 + 3 * 7168) * BF16 + 16) / 4


def test_shared_experts_and_router_steps_by_hand():
    """DeepSeek-V3's routed shape (256 experts of 2048, top 8, d 7168, one shared expert): the loop (accumulator
    plus 8/256 of the tokens at an expert) outweighs the shared expert's three intermediates and the router's
    logits and probabilities; with 16 experts of width 64 the shared expert of 2048 is the peak; with 4096 experts
    of width 8 and top 1 the router is."""
    v3 = FeedForward(intermediate=18432, n_experts=256, n_active_experts=8, n_shared_experts=1, moe_intermediate=2048,
                     n_dense_layers=0)
    loop = 7168 * BF16 + 8 / 256 * ((7168 + 3 * 2048) * BF16 + 16)
    assert v3.prefill_peak_bytes(7168, 61, 1, BF16, fused_moe=False) == 8 * (BF16 + INT64) + loop
    shared = FeedForward(intermediate=0, n_experts=16, n_active_experts=2, moe_intermediate=64, shared_intermediate=2048,
                         n_dense_layers=0)
    assert shared.prefill_peak_bytes(512, 4, 1, BF16, fused_moe=False) == 2 * (BF16 + INT64) + 3 * 2048 * BF16
    router = FeedForward(intermediate=0, n_experts=4096, n_active_experts=1, moe_intermediate=8, n_dense_layers=0)
    assert router.prefill_peak_bytes(64, 4, 1, BF16, fused_moe=False) == (BF16 + INT64) + 2 * 4096 * BF16


def test_jamba_prefill_peak_is_the_mamba_phase_by_hand():
    """Jamba-v0.1 (d 4096, Mamba d_inner 8192 state 16 chunk 64, dense and 16-expert top-2 feed-forwards of 14336
    on alternate layers), batch 1, bf16, one 4096-token prefill: per token a dense layer holds gate, up and product
    (3 x 14336) and an MoE layer far less (accumulator, an eighth of the tokens at an expert), so the Mamba phase
    (x and z, convolved x, dt, output: 5 x 8192, B and C) with its chunk's fp32 scratch is the peak."""
    m = get_preset("jamba-v0.1")
    assert m.ffn.prefill_peak_bytes(4096, 32, 1, BF16, fused_moe=False) == 3 * 14336 * BF16
    tokens = 4096
    mamba = tokens * BF16 * (2 * 4096 + 5 * 8192 + 2 * 16)
    scratch = 4 * (4 * 64 * 8192 * 16 + 2 * 64 * (8192 + 16) + 8192 * 16) + 3 * 8192 * BF16
    logits = 65536 * 4
    dense_ffn = tokens * BF16 * (2 * 4096 + 3 * 14336)
    assert dense_ffn < mamba + scratch
    assert estimator(m, prefill_chunk=0, fused_moe=False).activation_bytes_per_gpu(1, tokens) == mamba + scratch + logits


@pytest.mark.parametrize("shared", [0, 96])
def test_moe_layer_holds_what_the_formula_counts_at_its_busiest_expert(shared):
    """kvplan.models' MoE in bf16 on 512 tokens: the tensors it creates peak at the formula's bytes with the
    busiest expert's tokens (read from the router) in place of uniform routing's 2/8 of them, to the byte."""
    d, tokens, width = 64, 512, 96
    ffn = FeedForward(intermediate=width, n_experts=8, n_active_experts=2, moe_intermediate=width, n_dense_layers=0,
                      shared_intermediate=shared)
    torch.manual_seed(0)
    layer = MoE(d, ffn, dtype=torch.bfloat16)
    x = torch.randn(tokens, d, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        chosen = torch.softmax(layer.router(x), -1).topk(2, -1).indices
        with LiveBytes() as live:
            layer(x)
    busiest = torch.bincount(chosen.flatten(), minlength=8).max().item()
    per_routed = (d + 3 * width) * BF16 + 2 * INT64
    uniform = tokens * ffn.prefill_peak_bytes(d, 1, 1, BF16, fused_moe=False)
    if shared:  # the shared expert's intermediates outweigh the loop at these widths
        assert live.peak == uniform == tokens * (2 * (BF16 + INT64) + 3 * shared * BF16)
    else:
        assert live.peak == uniform + (busiest - tokens * 2 / 8) * per_routed


def test_jamba_like_prefill_peak_on_the_cpu_is_the_estimate():
    """A 4-layer Jamba (d 128, Mamba d_inner 256, state 16, chunk 64; attention on layer 2; dense feed-forwards
    of 448 on even layers, 16 experts top 2 on odd ones) prefilling 2048 bf16 tokens: the tensors it creates
    (kvplan.profilers.live) peak within 5% of the estimate, the Mamba phase, where counting every active expert's
    intermediates at once would overshoot by more."""
    config = {"model_type": "jamba", "num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 448, "attn_layer_period": 4, "attn_layer_offset": 2,
              "expert_layer_period": 2, "expert_layer_offset": 1, "num_experts": 16, "num_experts_per_tok": 2,
              "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 8, "vocab_size": 512,
              "tie_word_embeddings": False}
    desc = model_from_config(config)
    tokens = 2048
    net = build(desc, max_batch=1, max_context=tokens, dtype=torch.bfloat16, device="cpu", kv_dtype=None, seed=0)
    ids = torch.randint(0, 512, (1, tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), LiveBytes() as live:
        net.prefill(ids)
    estimate = estimator(desc, prefill_chunk=0, fused_moe=False).activation_bytes_per_gpu(1, tokens)
    assert abs(estimate / live.peak - 1) < 0.05
    all_experts_at_once = tokens * BF16 * (2 * 128 + 3 * 2 * 448) + 512 * 4
    assert all_experts_at_once / live.peak - 1 > 0.05


def test_a_fused_moe_holds_every_active_experts_intermediates():
    """What serving engines run by default (Deployment.fused_moe, vLLM's fused_moe): Mixtral's 2 active experts'
    gate, up and product at once, 3 x 2 x 14336 per token, halved by tp 2."""
    ffn = get_preset("mixtral-8x7b").ffn
    assert ffn.prefill_peak_bytes(4096, 32, 1, BF16) == 3 * 2 * 14336 * BF16
    assert ffn.prefill_peak_bytes(4096, 32, 2, BF16) == 3 * 14336 * BF16
    assert estimator(get_preset("mixtral-8x7b"), prefill_chunk=0).activation_bytes_per_gpu(1, 4096) > \
        estimator(get_preset("mixtral-8x7b"), prefill_chunk=0, fused_moe=False).activation_bytes_per_gpu(1, 4096)
