"""Every attention kind in kvplan.kinds.KINDS, its example() in a small model (d_model 64, 2 layers), on the CPU:
a torch layer whose real cache tensors hold the Estimator's bytes, cached decode equal to the full forward,
FlopCounterMode's prefill FLOPs equal to the counted estimate, a tensor-parallel shard rule whose slices sum
to the full layer, a re-cast for each of its --attention names, and a cache formula derived by hand here.
A kind added to the registry runs all of them; one without a hand formula in HAND_CACHE fails."""

import pytest
import torch

from kvplan.dtypes import FORMATS
from kvplan.kinds import KINDS, RECAST_NAMES, AttentionKind
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
    return Model(name=f"{cls.name}-example", n_layers=LAYERS, d_model=D_MODEL, vocab_size=VOCAB,
                 attention=cls.example(), ffn=FeedForward(96))


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


def hand_cache_bytes(attention: AttentionKind, kv_dtype: str) -> int:
    """Cache bytes per token per layer of `attention` from its HAND_CACHE formula."""
    if attention.name not in HAND_CACHE:
        raise KeyError(f"attention kind {attention.name!r} has no hand-derived cache formula: add one to "
                       "HAND_CACHE in tests/test_kinds_registry.py")
    elements, own_bytes = HAND_CACHE[attention.name](attention)
    return int(elements * FORMATS[kv_dtype].bytes_per_element) + own_bytes


@every_kind
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp32"])
def test_cache_bytes_per_token_by_hand(cls, kv_dtype):
    desc = example_model(cls)
    per_token_layer = hand_cache_bytes(desc.attention, kv_dtype)
    assert estimator(desc, kv_format=FORMATS[kv_dtype]).kv_bytes_per_token_layer == per_token_layer
    batch, context = 3, 24
    net = build(desc, max_batch=batch, max_context=context, dtype=torch.float32, kv_dtype=kv_dtype)
    assert net.cache_bytes_allocated() == LAYERS * batch * context * per_token_layer


def test_a_kind_without_a_hand_formula_fails():
    class Novel(AttentionKind):
        name = "novel"

    with pytest.raises(KeyError, match="'novel' has no hand-derived cache formula"):
        hand_cache_bytes(Novel(), "bf16")


# --- the torch layer ----------------------------------------------------------------------------------------
@every_kind
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_torch_layer_caches_what_the_estimate_says(cls, kv_dtype):
    desc = example_model(cls)
    layer = layer_class(desc.attention)
    assert issubclass(layer, torch.nn.Module)
    assert all(type(block.attention) is layer for block in f64(desc).layers)
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
    assert desc.attention.check_shardable(TP) is None, "example() must split over 2 GPUs"
    assert isinstance(shard_spec(desc.attention, TP), cls)
    # Per layer: the 2 ranks' outputs before the all-reduce add up to the unsharded layer's output.
    for total, full in shard_outputs(desc, TP, ranks=range(TP)):
        torch.testing.assert_close(total, full, rtol=1e-10, atol=1e-10)


@every_kind
def test_shard_cache_bytes_per_gpu_equal_the_estimate(cls):
    desc, batch, context = example_model(cls), 2, 8
    _, fmt = cache_format(None, F64)
    expected = estimator(desc, tp=TP, kv_format=fmt).kv_cache_bytes_per_gpu(batch, context)
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
        assert isinstance(recast(base, name).attention, cls)
