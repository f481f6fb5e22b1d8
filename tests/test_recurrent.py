"""Recurrent layers (kvplan.kinds.recurrent) and hybrid models: the chunked forms against the step-by-step
recurrence written here from the papers' formulas, decode FLOPs under FlopCounterMode, the estimate of hybrids
derived by hand, re-casts into hybrids, and the checks a hybrid Model makes."""

import math

import pytest
import torch

from kvplan.dtypes import FORMATS
from kvplan.kinds import DenseAttention, GatedDeltaNet, Mamba, Mamba2
from kvplan.model import FeedForward, Model
from kvplan.models import build
from kvplan.models.gdn import chunk_gated_delta_rule
from kvplan.models.mamba import selective_scan
from kvplan.models.mamba2 import chunk_scan
from kvplan.presets import get_preset
from kvplan.profilers.flops import count_flops
from kvplan.recast import recast
from kvplan.units import InputError
from model_helpers import F64, estimator

GEN = torch.Generator().manual_seed(7)


def randn(*shape):
    return torch.randn(*shape, dtype=F64, generator=GEN)


# --- the chunked forms against the recurrence ----------------------------------------------------------------
def gated_delta_reference(q, k, v, g, beta, state):
    """Gated DeltaNet token by token (Yang et al. 2024, eq. for the gated delta rule), per head with S of shape
    [dk, dv]: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t."""
    B, T, H, dk = k.shape
    out = torch.empty(B, T, H, v.size(-1), dtype=F64)
    S = state.clone()
    eye = torch.eye(dk, dtype=F64)
    for t in range(T):
        for b in range(B):
            for h in range(H):
                kt = k[b, t, h][:, None]
                S[b, h] = math.exp(g[b, t, h]) * (eye - beta[b, t, h] * kt @ kt.T) @ S[b, h] \
                    + beta[b, t, h] * kt @ v[b, t, h][None, :]
                out[b, t, h] = S[b, h].T @ q[b, t, h]
    return out, S


def ssd_reference(x, dt, A, B_, C_, state):
    """Mamba-2 token by token (Dao and Gu 2024), per head with h of shape [N, P]: h_t = exp(dt_t A) h_{t-1} +
    B_t (dt_t x_t)^T, y_t = h_t^T C_t; heads share their group's B and C in equal blocks."""
    b_, T, H, P = x.shape
    group = H // B_.size(2)
    y = torch.empty_like(x)
    h = state.clone()
    for t in range(T):
        for b in range(b_):
            for i in range(H):
                g = i // group
                h[b, i] = math.exp(dt[b, t, i] * A[i]) * h[b, i] + B_[b, t, g][:, None] * (dt[b, t, i] * x[b, t, i])
                y[b, t, i] = h[b, i].T @ C_[b, t, g]
    return y, h


@pytest.mark.parametrize("T,chunk", [(7, 4), (8, 4), (5, 8), (1, 4)])
def test_chunked_gated_delta_rule_equals_the_recurrence(T, chunk):
    B, H, dk, dv = 2, 3, 4, 5
    q, k = randn(B, T, H, dk), torch.nn.functional.normalize(randn(B, T, H, dk), dim=-1)
    v = randn(B, T, H, dv)
    g = -torch.rand(B, T, H, dtype=F64, generator=GEN)  # log decay <= 0
    beta = torch.rand(B, T, H, dtype=F64, generator=GEN)
    state = randn(B, H, dk, dv)
    out, final = chunk_gated_delta_rule(q, k, v, g, beta, chunk, state)
    ref_out, ref_final = gated_delta_reference(q, k, v, g, beta, state)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T,chunk", [(7, 4), (8, 4), (5, 8), (1, 4)])
def test_chunked_state_space_dual_equals_the_recurrence(T, chunk):
    b, H, P, G, N = 2, 4, 3, 2, 5
    x, B_, C_ = randn(b, T, H, P), randn(b, T, G, N), randn(b, T, G, N)
    dt = torch.rand(b, T, H, dtype=F64, generator=GEN)
    A = -torch.rand(H, dtype=F64, generator=GEN) - 0.1
    state = randn(b, H, N, P)
    y, final = chunk_scan(x, dt, A, B_, C_, chunk, state)
    ref_y, ref_final = ssd_reference(x, dt, A, B_, C_, state)
    torch.testing.assert_close(y, ref_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-10)


def selective_reference(x, dt, A, B_, C_, state):
    """Mamba-1 token by token (Gu and Dao 2023, Algorithm 2), per channel d with h of shape [N]:
    h_t = exp(dt_t A_d) h_{t-1} + dt_t x_t B_t, y_t = h_t . C_t."""
    b_, T, D = x.shape
    y = torch.empty_like(x)
    h = state.clone()
    for t in range(T):
        for b in range(b_):
            for d in range(D):
                h[b, d] = torch.exp(dt[b, t, d] * A[d]) * h[b, d] + dt[b, t, d] * x[b, t, d] * B_[b, t]
                y[b, t, d] = h[b, d] @ C_[b, t]
    return y, h


@pytest.mark.parametrize("T,chunk", [(7, 4), (8, 4), (5, 8), (1, 4), (13, 16)])
def test_chunked_selective_scan_equals_the_recurrence(T, chunk):
    b, D, N = 2, 6, 5
    x, B_, C_ = randn(b, T, D), randn(b, T, N), randn(b, T, N)
    dt = torch.rand(b, T, D, dtype=F64, generator=GEN)
    A = -torch.rand(D, N, dtype=F64, generator=GEN) - 0.1  # a decay per channel and state entry
    state = randn(b, D, N)
    y, final = selective_scan(x, dt, A, B_, C_, chunk, state)
    ref_y, ref_final = selective_reference(x, dt, A, B_, C_, state)
    torch.testing.assert_close(y, ref_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-10)


# --- FLOPs -------------------------------------------------------------------------------------------------
def hybrid(kind, mixers=("recurrent", "attention"), d_model=64) -> Model:
    return Model(name="hybrid", n_layers=len(mixers), d_model=d_model, vocab_size=61,
                 attention=DenseAttention.example(), ffn=FeedForward(96), recurrent=kind, layer_mixers=mixers)


@pytest.mark.parametrize("kind", [GatedDeltaNet.example(), Mamba2.example(), Mamba.example()],
                         ids=["gdn", "mamba2", "mamba"])
def test_a_decode_step_counts_the_projections_and_the_state_products(kind):
    """One token through the layer: its projections (2 per weight) and the step on the state (step_flops); the
    short convolution's step is elementwise, which FlopCounterMode does not see."""
    net = build(hybrid(kind, ("recurrent",)), max_batch=2, max_context=8, dtype=F64, kv_dtype=None)
    layer = net.layers[0].recurrent
    x = randn(2, 1, 64)
    layer.prefill(randn(2, 3, 64))
    assert count_flops(lambda: layer.decode(x, torch.tensor([3]))) == 2 * 2 * kind.linear_params(64) + 2 * kind.step_flops()


def test_gdn_flops_by_hand():
    # Qwen3-Next's layer: 32 value heads of 128, 16 key heads of 128, chunks of 64, kernel 4.
    a = GatedDeltaNet(n_heads=32, n_key_heads=16, key_head_dim=128, head_dim=128)
    c, d = 64, 128
    per_head_chunk = 2 * c * c * d * 2 + 2 * c * c * d + 3 * 2 * c * d * d  # K K^T, Q K^T, scores V; three state products
    solve = c * (c - 1) * 2 * d  # unit lower-triangular solve for V and K (dk + dv columns)
    conv = 2 * (2 * 16 * 128 + 32 * 128) * 4
    r = 100 - c  # 100 tokens: a chunk of 64 and one of 36
    per_head_rest = 2 * r * r * d * 2 + 2 * r * r * d + 3 * 2 * r * d * d
    solve_rest = r * (r - 1) * 2 * d
    assert a.prefill_flops(100) == 32 * (per_head_chunk + solve + per_head_rest + solve_rest) + 100 * conv
    assert a.solve_flops(100) == 32 * (solve + solve_rest)
    assert a.decode_flops() == 32 * 3 * 2 * d * d + conv


def test_mamba2_flops_by_hand():
    # Nemotron-H-56B's layer: 256 heads of 64, state 256, 8 groups, chunks of 128.
    a = Mamba2(n_heads=256, head_dim=64, state_size=256, n_groups=8)
    c, n, p = 128, 256, 64
    chunk = 8 * 2 * c * c * n + 256 * (2 * c * c * p + 2 * 2 * c * n * p)
    conv = 2 * (256 * 64 + 2 * 8 * 256) * 4
    assert a.prefill_flops(128) == chunk + 128 * conv
    assert a.decode_flops() == 256 * 2 * 2 * n * p + conv


def test_mamba_counts_by_hand():
    # Jamba-v0.1's layer: d_inner 8192 (expand 2 x 4096), state 16, dt_rank 256 (ceil(4096 / 16)), kernel 4.
    a, d, n, r, hidden = Mamba(d_inner=8192, state_size=16, dt_rank=256), 8192, 16, 256, 4096
    conv = 2 * d * 4
    assert a.prefill_flops(100) == 100 * (2 * d * n + 2 * d * n) + 100 * conv  # dt x B^T and h C per token
    assert a.decode_flops() == 4 * d * n + conv
    # in_proj, conv + bias, x_proj, dt_proj + bias, A_log, D, out_proj, the norms on dt, B and C.
    params = (hidden * 2 * d + d * 4 + d + d * (r + 2 * n) + r * d + d + d * n + d + d * hidden + r + 2 * n)
    assert a.params(hidden) == params
    split = (hidden * d + d // 2 * 4 + d // 2 + d // 2 * (r + 2 * n) + r * d // 2 + d // 2 + d // 2 * n + d // 2
             + d // 2 * hidden + r + 2 * n)
    assert a.params(hidden, tp=2) == split
    assert a.state_bytes(FORMATS["bf16"]) == (d * n + 3 * d) * 2
    assert a.mixer_all_reduce_elements(1) == 0 and a.mixer_all_reduce_elements(2) == r + 2 * n


def test_jamba_tensor_parallel_all_reduces_x_proj_in_every_mamba_layer():
    """Split over 2 GPUs, each of the 28 Mamba layers all-reduces dt_rank + 2 state_size values per token besides
    the two all-reduces of d_model per layer."""
    from kvplan import parallel

    m = get_preset("jamba-v0.1")
    est = estimator(m, tp=2)
    tokens = 4096
    bytes_per_s, latency = est._link(2)
    outputs = m.sublayer_count() * parallel.all_reduce_seconds(tokens * 4096 * 2, 2, bytes_per_s, latency)
    mixers = 28 * parallel.all_reduce_seconds(tokens * (256 + 2 * 16) * 2, 2, bytes_per_s, latency)
    assert m.mixer_all_reduces(2) == ((28, 256 + 2 * 16),)
    assert est.communication_seconds(1, tokens) == pytest.approx(outputs + mixers, rel=1e-12)


# --- the estimate of a hybrid, by hand --------------------------------------------------------------------
def test_qwen3_next_estimate_by_hand():
    m = get_preset("qwen3-next-80b-a3b")
    assert (len(m.attention_layer_ids), len(m.recurrent_layer_ids)) == (12, 36)
    assert m.attention_layer_ids[:3] == (3, 7, 11)  # every 4th layer
    est = estimator(m)  # bf16 throughout
    kv_per_token = 12 * 2 * 2 * 256 * 2  # 12 attention layers, K and V, 2 KV heads of 256, bf16
    state = 36 * (32 * 128 * 128 + (2 * 16 * 128 + 32 * 128) * 3) * 2  # per sequence, bf16
    assert est.kv_bytes_per_token == kv_per_token and est.state_bytes_per_sequence == state
    context, batch = 131072, 4
    assert est.kv_cache_bytes(batch, context) == batch * (context * kv_per_token + state)
    # A decode step reads the attention cache and reads and writes the state.
    assert est.decode_cache_read_bytes(batch, context) == batch * (context * kv_per_token + 2 * state)
    pair = 4 * 16 * 256
    assert est.decode_attention_flops(context - 1) == 12 * pair * context + 36 * m.recurrent.decode_flops()


def test_recurrent_state_is_the_same_at_every_context():
    m = recast(get_preset("llama-3.1-8b"), "gdn")
    est = estimator(m)
    assert est.kv_bytes_per_token == 0
    assert est.kv_cache_bytes(2, 1024) == est.kv_cache_bytes(2, 1_000_000) == 2 * est.state_bytes_per_sequence


def test_state_dtype_and_tensor_parallelism():
    kind = GatedDeltaNet(n_heads=32, n_key_heads=16, key_head_dim=128, head_dim=128, state_dtype="fp32")
    bf16 = FORMATS["bf16"]
    conv = (2 * 16 * 128 + 32 * 128) * 3
    assert kind.state_bytes(bf16) == 32 * 128 * 128 * 4 + conv * 2  # the state in fp32, the convolution in bf16
    assert kind.state_bytes(bf16, tp=4) == 8 * 128 * 128 * 4 + conv // 4 * 2
    assert GatedDeltaNet(n_heads=32, n_key_heads=2, key_head_dim=8, head_dim=8).check_shardable(4)


def test_mamba2_groups_replicate_where_tp_exceeds_them():
    kind = Mamba2(n_heads=8, head_dim=4, state_size=16, n_groups=1)
    assert kind.check_shardable(2) is None
    assert kind.conv_channels(2) == 4 * 4 + 2 * 16  # half the heads, the whole group
    assert "3 groups neither split" in Mamba2(n_heads=12, head_dim=4, state_size=16, n_groups=3).check_shardable(2)


# --- re-casts into hybrids ---------------------------------------------------------------------------------
def test_hybrid_recast_keeps_attention_every_fourth_layer():
    base = get_preset("llama-3.1-8b")
    m = recast(base, "hybrid")
    assert m.attention_layer_ids == tuple(range(3, 32, 4)) and len(m.recurrent_layer_ids) == 24
    assert m.recurrent == GatedDeltaNet(n_heads=32, n_key_heads=32, key_head_dim=128, head_dim=128)
    assert m.attention == base.attention
    every6 = recast(base, "mamba2:attention_every=6,state_size=64")
    assert every6.attention_layer_ids == (5, 11, 17, 23, 29) and every6.recurrent.state_size == 64
    assert recast(base, "gdn").attention_layer_ids == ()
    # Mamba-1 as Jamba builds it from a 4096-wide model: expand 2, state 16, dt_rank ceil(4096 / 16).
    jamba_like = recast(base, "mamba:attention_every=8")
    assert jamba_like.attention_layer_ids == (7, 15, 23, 31)
    assert jamba_like.recurrent == Mamba(d_inner=8192, state_size=16, dt_rank=256)
    assert recast(base, "mamba:state_size=8,dt_rank=64").recurrent.selection_width == 64 + 2 * 8


def test_recasting_a_hybrid_changes_only_its_attention_layers():
    m = get_preset("qwen3-next-80b-a3b")
    mla = recast(m, "mla")
    assert mla.recurrent == m.recurrent and mla.layer_mixers == m.layer_mixers
    assert type(mla.attention).__name__ == "MLA"


@pytest.mark.parametrize("spec,message", [
    ("hybrid:attention_every=0", "attention_every must be positive"),
    ("gdn:state_size=4", "unknown option"),
    ("hybrid:key_heads=5", "must be a multiple of 5 key heads"),
])
def test_bad_hybrid_recasts(spec, message):
    with pytest.raises(InputError, match=message):
        recast(get_preset("llama-3.1-8b"), spec)


# --- what a hybrid Model checks ------------------------------------------------------------------------------
def test_model_refuses_mixers_it_cannot_place():
    common = dict(name="m", n_layers=2, d_model=64, vocab_size=61, ffn=FeedForward(96))
    with pytest.raises(ValueError, match="need a recurrent kind"):
        Model(attention=DenseAttention.example(), layer_mixers=("recurrent", "attention"), **common)
    with pytest.raises(ValueError, match="is recurrent: pass it as `recurrent`"):
        Model(attention=GatedDeltaNet.example(), **common)
    with pytest.raises(ValueError, match="layer_mixers must give one of"):
        Model(attention=DenseAttention.example(), recurrent=Mamba2.example(), layer_mixers=("mamba",) * 2, **common)


def test_norms_and_all_reduces_follow_the_sublayers():
    # Nemotron-H's blocks hold one mixer or one MLP each: one norm per block and one all-reduce per block.
    m = get_preset("nemotron-h-56b")
    assert m.sublayer_count() == m.n_layers == 118
    assert m.norm_params() == 119 * 8192


# --- the prefill's working set -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,d_model", [
    (GatedDeltaNet(n_heads=8, n_key_heads=4, key_head_dim=32, head_dim=48, chunk=16), 128),
    (GatedDeltaNet(n_heads=4, n_key_heads=4, key_head_dim=64, head_dim=32, chunk=32), 256),
    (Mamba2(n_heads=16, head_dim=32, state_size=64, n_groups=4, chunk=16), 256),
    (Mamba2(n_heads=8, head_dim=64, state_size=32, n_groups=1, chunk=32, gated_norm=False), 192),
    (Mamba(d_inner=256, state_size=16, dt_rank=8, chunk=16), 128),
], ids=["gdn-gva", "gdn", "mamba2-groups", "mamba2-ungated-norm", "mamba"])
@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_peak_is_the_estimate(kind, d_model, batch):
    """The tensors one recurrent layer's bf16 prefill holds at its peak (counted as PyTorch hands them out,
    kvplan.profilers.live), against activation_elements per token (exact) and prefill_scratch_bytes (one chunk's
    working set): within 5% over 16 chunks."""
    from kvplan.models.transformer import layer_class
    from kvplan.models.common import Rope
    from kvplan.profilers.live import LiveBytes

    layer = layer_class(kind)(kind, d_model, None, batch, 1, Rope(8, 1), torch.bfloat16, dtype=torch.bfloat16)
    tokens = 16 * kind.chunk
    x = torch.randn(batch, tokens, d_model, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), LiveBytes() as live:
        layer.prefill(x)
    in_flight = batch * tokens
    estimate = in_flight * 2 * kind.activation_elements() + kind.prefill_scratch_bytes(batch, tokens, in_flight, 2, 1,
                                                                                        True)
    assert abs(estimate / live.peak - 1) < 0.05


def test_hybrid_cache_per_gpu_under_tensor_and_pipeline_parallelism():
    """tp 2 splits the state and the KV heads; pp 2 puts 18 recurrent and 6 attention layers on each stage."""
    m = get_preset("qwen3-next-80b-a3b")
    one, split = estimator(m), estimator(m, tp=2, pp=2)
    state_layer = one.state_bytes_per_sequence // 36
    kv_layer = one.kv_bytes_per_token // 12
    assert split.kv_cache_bytes_per_gpu(3, 1000) == 3 * (18 * state_layer // 2 + 6 * 1000 * kv_layer // 2)
    assert split.kv_cache_bytes(3, 1000) == one.kv_cache_bytes(3, 1000)  # nothing replicated
