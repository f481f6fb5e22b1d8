"""Properties that hold for every model, kind and size (hypothesis), independent of any budget."""

from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kvplan.api import deployment_for
from kvplan.kinds import MLA, TPA, DenseAttention, keys_attended_sum
from kvplan.estimator import Estimator
from kvplan.hardware import GPUS
from kvplan.model import FeedForward, Model
from kvplan.presets import get_preset
from kvplan.recast import recast

H100 = GPUS["h100-sxm"]
# Every kind, on models small and large: native presets and re-casts of one dense model.
KINDS = ["native", "mha", "mqa", "gqa:kv_heads=4", "mla", "tpa", "dsa", "window:1024",
         "gqa:kv_heads=2,window=512,global_every=3"]
PRESETS = ["llama-3.1-8b", "mistral-7b-v0.1", "gemma-3-27b", "deepseek-v3", "deepseek-v3.2-exp", "modernbert-base",
           "t6-medium", "t6-medium-mla"]
SIZES = st.integers(min_value=1, max_value=2**20)
FAST = settings(max_examples=60, deadline=None)


def estimator(model: Model, kv_dtype="bf16", **options) -> Estimator:
    return Estimator(model, deployment_for(H100, kv_dtype=kv_dtype, **options))


models = st.one_of(
    st.sampled_from(PRESETS).map(get_preset),
    st.sampled_from(KINDS).map(lambda spec: recast(get_preset("t6-medium-mha"), spec)),
)


@FAST
@given(models, SIZES, SIZES, st.integers(1, 64), st.sampled_from([0, 16, 256]))
def test_cache_is_monotone_in_context(model, a, b, batch, block):
    e = estimator(model, block_size=block)
    short, long = sorted((a, b))
    assert e.kv_cache_bytes(batch, short) <= e.kv_cache_bytes(batch, long)
    assert e.kv_cache_bytes_per_gpu(batch, short) <= e.kv_cache_bytes_per_gpu(batch, long)


@FAST
@given(models, SIZES, st.integers(1, 256), st.integers(1, 256))
def test_cache_is_linear_hence_monotone_in_batch(model, context, a, b):
    e = estimator(model)
    small, large = sorted((a, b))
    assert e.kv_cache_bytes(small, context) <= e.kv_cache_bytes(large, context)
    assert e.kv_cache_bytes(a, context) * b == e.kv_cache_bytes(b, context) * a


@FAST
@given(st.sampled_from(["llama-3.1-8b", "deepseek-v3", "t6-medium"]), st.integers(1, 8192), st.integers(1, 2**20))
def test_a_window_caps_the_cache(name, window, context):
    base = get_preset(name)
    windowed = estimator(recast(base, f"window:{window}"))
    full = estimator(base)
    # Past the window the cache stops growing; below it nothing changes; never more than no window.
    assert windowed.kv_cache_bytes(1, max(context, window)) == windowed.kv_cache_bytes(1, window)
    assert windowed.kv_cache_bytes(1, min(context, window)) == full.kv_cache_bytes(1, min(context, window))
    assert windowed.kv_cache_bytes(1, context) <= full.kv_cache_bytes(1, context)


@FAST
@given(st.sampled_from([k for k in KINDS if k != "dsa"]), SIZES, st.integers(1, 64), st.integers(0, 3))
def test_fp8_exactly_halves_bf16(kind, context, batch, log_tp):
    # fp8 keeps one scale per tensor (no per-token overhead). DSA is left out: its indexer key is fp8 in both.
    model = recast(get_preset("t6-medium-mha"), kind)
    bf16, fp8 = estimator(model, gpus=2**log_tp), estimator(model, kv_dtype="fp8", gpus=2**log_tp)
    assert 2 * fp8.kv_bytes_per_token == bf16.kv_bytes_per_token
    assert 2 * fp8.kv_cache_bytes(batch, context) == bf16.kv_cache_bytes(batch, context)
    assert 2 * fp8.kv_cache_bytes_per_gpu(batch, context) == bf16.kv_cache_bytes_per_gpu(batch, context)


@FAST
@given(st.integers(1, 128), st.integers(1, 256), st.integers(1, 16), st.integers(1, 16), SIZES)
def test_tpa_is_smaller_than_mha_exactly_when_its_factors_are(heads, head_dim, k_rank, v_rank, context):
    def model(attention):
        return Model(name="m", n_layers=2, d_model=heads * head_dim, vocab_size=100, attention=attention,
                     ffn=FeedForward(intermediate=4 * heads * head_dim))

    tpa = estimator(model(TPA(heads, head_dim, q_rank=1, k_rank=k_rank, v_rank=v_rank)))
    mha = estimator(model(DenseAttention(heads, heads, head_dim)))
    factors_smaller = (k_rank + v_rank) * (heads + head_dim) < 2 * heads * head_dim
    assert (tpa.kv_cache_bytes(1, context) < mha.kv_cache_bytes(1, context)) == factors_smaller


@FAST
@given(st.integers(0, 3000), st.one_of(st.none(), st.integers(1, 500)), st.integers(0, 3000))
def test_keys_attended_sum_matches_the_plain_sum(n, cap, start):
    assert keys_attended_sum(n, cap, start) == sum(i + 1 if cap is None else min(i + 1, cap)
                                                   for i in range(start, start + n))


@FAST
@given(models, st.integers(1, 2**17), st.integers(1, 2**17))
def test_chunked_prefill_sums_to_whole_prefill(model, first, second):
    assume(not model.is_encoder)  # an encoder encodes whole sequences: no chunks, no cache to start from
    e = estimator(model)
    whole = e.prefill_attention_flops(1, first + second)
    assert whole == e.prefill_attention_flops(1, first) + e.prefill_attention_flops(1, second, start=first)


@FAST
@given(models, st.integers(0, 2**20), st.integers(0, 2**20))
def test_decode_flops_never_fall_with_position(model, a, b):
    e = estimator(model)
    early, late = sorted((a, b))
    assert e.decode_flops_per_token(early) <= e.decode_flops_per_token(late)


@FAST
@given(models, st.sampled_from(["int8", "int4", "fp8", "bf16", "fp32"]), st.integers(0, 4))
def test_tensor_parallel_copies_add_up(model, kv_dtype, log_tp):
    # The deployment's cache is tp slices; a slice is never smaller than an even share.
    tp = 2**log_tp
    one, many = estimator(model, kv_dtype), estimator(model, kv_dtype, gpus=tp)
    assert many.kv_cache_bytes(1, 4096) == tp * many.kv_cache_bytes_per_gpu(1, 4096)
    assert many.kv_cache_bytes(1, 4096) >= one.kv_cache_bytes(1, 4096)


@FAST
@given(st.integers(1, 64), st.integers(1, 1024), st.sampled_from(["int8", "int4"]))
def test_quantized_vectors_hold_their_bits_plus_scales(count, length, kv_dtype):
    from kvplan.dtypes import FORMATS

    fmt = FORMATS[kv_dtype]
    stored = fmt.vector_bytes(length)
    assert stored * 8 >= length * fmt.bits  # at least the payload
    assert stored < FORMATS["bf16"].vector_bytes(length) + fmt.group_overhead_bytes  # below bf16 (+ one group)


@FAST
@given(st.integers(1, 256), st.integers(1, 1024), st.integers(0, 128), st.integers(1, 256))
def test_mla_cache_ignores_heads(heads, latent, rope, d_h):
    # The latent and the RoPE key are shared by every head: more heads, same cache.
    def cache(n_heads):
        attention = MLA(n_heads=n_heads, kv_lora_rank=latent, qk_rope_head_dim=rope, qk_nope_head_dim=d_h,
                        v_head_dim=d_h)
        m = Model(name="m", n_layers=3, d_model=1024, vocab_size=100, attention=attention, ffn=FeedForward(1024))
        return estimator(m).kv_bytes_per_token

    assert cache(heads) == cache(heads + 1) == 3 * (latent + rope) * 2


def test_recast_keeps_everything_but_attention():
    base = get_preset("llama-3.1-8b")
    for spec in KINDS[1:]:
        other = recast(base, spec)
        assert replace(other, name=base.name, attention=base.attention, layer_windows=base.layer_windows) == base
