"""Every attention kind in kvplan.kinds.KINDS, its example() in a small model (d_model 64, 2 layers), on the CPU:
a torch layer whose real cache tensors hold the Estimator's bytes, cached decode equal to the full forward,
FlopCounterMode's prefill FLOPs equal to the counted estimate, a tensor-parallel shard rule whose slices sum
to the full layer, a re-cast for each of its --attention names, and a cache formula derived by hand here.
A recurrent kind runs them in a hybrid: its layer, then a dense attention layer.
A kind added to the registry runs all of them; one without a hand formula in HAND_CACHE (HAND_STATE for a
recurrent kind) fails."""

import pytest
import torch

from kvplan.dtypes import FORMATS
from kvplan.kinds import KINDS, RECAST_NAMES, AttentionKind, DenseAttention
from kvplan.model import FeedForward, Model
from kvplan.models import build
from kvplan.models.transformer import layer_class
from kvplan.presets import get_preset
from kvplan.profilers.distributed import cache_bytes, shard_layers, shard_spec
from kvplan.profilers.distributed.measure import cache_format
from kvplan.recast import recast
from model_helpers import (F64, VOCAB, assert_cache_bytes_equal_the_estimate, assert_cached_decode_equals_forward,
                           assert_counted_prefill_flops, estimator, f64, shard_outputs)

D_MODEL, LAYERS, TP = 64, 2, 2
every_kind = pytest.mark.parametrize("cls", list(KINDS.values()), ids=list(KINDS))


def example_model(cls: type[AttentionKind]) -> Model:
    """All layers of the kind; a recurrent kind's layer followed by a dense attention layer."""
    if cls.recurrent:
        return Model(name=f"{cls.name}-example", n_layers=LAYERS, d_model=D_MODEL, vocab_size=VOCAB,
                     attention=DenseAttention.example(), ffn=FeedForward(96), recurrent=cls.example(),
                     layer_mixers=("recurrent", "attention"))
    return Model(name=f"{cls.name}-example", n_layers=LAYERS, d_model=D_MODEL, vocab_size=VOCAB,
                 attention=cls.example(), ffn=FeedForward(96))


def kind_of(desc: Model, cls: type[AttentionKind]) -> AttentionKind:
    """The model's kind of class `cls`: its recurrent kind or its attention."""
    return desc.recurrent if cls.recurrent else desc.attention


# --- cache per token per layer, by hand from each kind's fields -----------------------------------------
# Each gives (elements stored in the KV dtype, bytes stored in a format of the kind's own), written from the
# kind's paper or reference code rather than from its cache_vectors.
def _dense_cache(a):
    return 2 * a.n_kv_heads * a.head_dim, 0  # a key and a value vector per KV head


def _mla_cache(a):
    return a.kv_lora_rank + a.qk_rope_head_dim, 0  # the latent c_KV and the RoPE key all heads share


def _tpa_cache(a):
    return (a.k_rank + a.v_rank) * (a.n_heads + a.head_dim), 0  # per K and V rank: A (per head) and B (head_dim)


def _dsa_cache(a):
    # MLA's latent, and the indexer key in FP8 (1 byte an element) with one fp32 scale per 128 elements, as
    # DeepSeek-V3.2-Exp's inference code stores it.
    elements, _ = _mla_cache(a.mla)
    return elements, a.index_head_dim + 4 * -(-a.index_head_dim // 128)


HAND_CACHE = {"dense": _dense_cache, "mla": _mla_cache, "tpa": _tpa_cache, "dsa": _dsa_cache}


# Recurrent kinds: (elements of the recurrent state, elements of the convolution's state) per sequence per layer,
# from the layers' papers and reference code (transformers' Qwen3NextGatedDeltaNet, Mamba2Mixer
# and JambaMambaMixer caches).
def _gdn_state(a):
    # A key_head_dim x head_dim matrix per value head; the last kernel - 1 inputs of q, k (key heads) and v.
    conv_channels = 2 * a.n_key_heads * a.key_head_dim + a.n_heads * a.head_dim
    return a.n_heads * a.key_head_dim * a.head_dim, conv_channels * (a.conv_kernel - 1)


def _mamba2_state(a):
    # A head_dim x state_size matrix per head; the last kernel - 1 inputs of x (heads) and B and C (groups).
    conv_channels = a.n_heads * a.head_dim + 2 * a.n_groups * a.state_size
    return a.n_heads * a.head_dim * a.state_size, conv_channels * (a.conv_kernel - 1)


def _mamba_state(a):
    # A state_size-wide state per channel (transformers' JambaMambaMixer: [d_inner, d_state]); the last kernel - 1
    # inputs of x, the convolution's d_inner channels.
    return a.d_inner * a.state_size, a.d_inner * (a.conv_kernel - 1)


HAND_STATE = {"gdn": _gdn_state, "mamba2": _mamba2_state, "mamba": _mamba_state}


def hand_cache_bytes(attention: AttentionKind, kv_dtype: str) -> int:
    """Cache bytes per token per layer of `attention` from its HAND_CACHE formula."""
    if attention.name not in HAND_CACHE:
        raise KeyError(f"attention kind {attention.name!r} has no hand-derived cache formula: add one to "
                       "HAND_CACHE in tests/test_kinds_registry.py")
    elements, own_bytes = HAND_CACHE[attention.name](attention)
    return int(elements * FORMATS[kv_dtype].bytes_per_element) + own_bytes


def hand_state_bytes(kind: AttentionKind, compute_bytes: int) -> int:
    """State bytes per sequence per layer of a recurrent kind from its HAND_STATE formula (state in its own
    state_dtype or the compute dtype, the convolution's inputs in the compute dtype)."""
    if kind.name not in HAND_STATE:
        raise KeyError(f"recurrent kind {kind.name!r} has no hand-derived state formula: add one to HAND_STATE in "
                       "tests/test_kinds_registry.py")
    state, conv = HAND_STATE[kind.name](kind)
    state_bytes = FORMATS[kind.state_dtype].bytes_per_element if kind.state_dtype else compute_bytes
    return int(state * state_bytes + conv * compute_bytes)


@every_kind
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp32"])
def test_cache_bytes_per_token_by_hand(cls, kv_dtype):
    desc = example_model(cls)
    per_token_layer = hand_cache_bytes(desc.attention, kv_dtype)
    state = hand_state_bytes(desc.recurrent, 4) if cls.recurrent else 0  # the model below computes in fp32
    est = estimator(desc, kv_format=FORMATS[kv_dtype], activation_format=FORMATS["fp32"])
    assert est.kv_bytes_per_token_layer == per_token_layer
    assert est.state_bytes_per_sequence == len(desc.recurrent_layer_ids) * state
    batch, context = 3, 24
    net = build(desc, max_batch=batch, max_context=context, dtype=torch.float32, kv_dtype=kv_dtype)
    attention_layers, recurrent_layers = len(desc.attention_layer_ids), len(desc.recurrent_layer_ids)
    assert net.cache_bytes_allocated() == batch * (attention_layers * context * per_token_layer
                                                   + recurrent_layers * state)


def test_a_kind_without_a_hand_formula_fails():
    class Novel(AttentionKind):
        name = "novel"

    with pytest.raises(KeyError, match="'novel' has no hand-derived cache formula"):
        hand_cache_bytes(Novel(), "bf16")
    with pytest.raises(KeyError, match="'novel' has no hand-derived state formula"):
        hand_state_bytes(Novel(), 2)


# --- the torch layer ----------------------------------------------------------------------------------------
@every_kind
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_torch_layer_caches_what_the_estimate_says(cls, kv_dtype):
    desc = example_model(cls)
    layer = layer_class(kind_of(desc, cls))
    assert issubclass(layer, torch.nn.Module)
    uses = desc.recurrent_layer_ids if cls.recurrent else desc.attention_layer_ids
    assert [i for i, block in enumerate(f64(desc).layers) if any(type(m) is layer for m in block.mixers)] == list(uses)
    assert_cache_bytes_equal_the_estimate(desc, kv_dtype)


@every_kind
def test_cached_decode_equals_the_full_forward(cls):
    assert_cached_decode_equals_forward(example_model(cls))


@every_kind
def test_prefill_flops_counted_equal_the_estimate(cls):
    assert_counted_prefill_flops(example_model(cls))


# --- tensor parallelism -------------------------------------------------------------------------------------
@every_kind
def test_shard_rule_slices_sum_to_the_full_layer(cls):
    desc = example_model(cls)
    assert desc.check_shardable(TP) is None, "example() must split over 2 GPUs"
    assert isinstance(shard_spec(kind_of(desc, cls), TP), cls)
    # Per mixer: the 2 ranks' outputs before the all-reduce add up to the unsharded layer's output.
    for total, full in shard_outputs(desc, TP, ranks=range(TP)):
        torch.testing.assert_close(total, full, rtol=1e-10, atol=1e-10)


@every_kind
def test_shard_cache_bytes_per_gpu_equal_the_estimate(cls):
    desc, batch, context = example_model(cls), 2, 8
    _, fmt = cache_format(None, F64)
    expected = estimator(desc, tp=TP, kv_format=fmt, activation_format=fmt).kv_cache_bytes_per_gpu(batch, context)
    for rank in range(TP):
        layers = shard_layers(desc, TP, rank, batch, context, F64, F64, "cpu", seed=0)
        assert cache_bytes(layers) == expected


# --- re-casts -----------------------------------------------------------------------------------------------
@every_kind
def test_every_recast_name_builds_the_kind(cls):
    assert cls.recast_names, f"{cls.name} has no --attention name (recast_names)"
    base = get_preset("llama-3.1-8b")
    for name in cls.recast_names:
        assert RECAST_NAMES[name] is cls
        assert isinstance(kind_of(recast(base, name), cls), cls)
