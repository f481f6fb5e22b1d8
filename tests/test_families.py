"""Model families from their published config.json files (tests/configs/, sources in its README): the parsed
structure, KV bytes per token derived by hand, and parameter counts against the published ones."""

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from kvplan.estimator import Deployment, Estimator
from kvplan.families import model_from_config, model_from_file
from kvplan.hardware import GPUS
from kvplan.model import chunked_keys_sum
from kvplan.presets import get_preset, preset_rows
from kvplan.units import InputError

CONFIGS = Path(__file__).parent / "configs"
BF16 = 2


def load(name: str):
    return model_from_file(CONFIGS / name)


def estimator(model, **kw) -> Estimator:
    return Estimator(model, Deployment(GPUS["h100-sxm"], **kw))


@pytest.mark.parametrize("preset,folder", [
    ("mixtral-8x7b", "mixtral-8x7b"), ("qwen3-30b-a3b", "qwen3-30b-a3b"), ("gpt-oss-20b", "gpt-oss-20b"),
    ("gpt-oss-120b", "gpt-oss-120b"), ("deepseek-v2-lite", "deepseek-v2-lite"), ("deepseek-v2", "deepseek-v2"),
    ("llama-4-scout", "llama-4-scout"), ("llama-4-maverick", "llama-4-maverick"), ("glm-4.5-air", "glm-4.5-air"),
    ("glm-4-9b", "glm-4-9b-0414"), ("qwen3-8b", "qwen3-8b"), ("mistral-nemo-12b", "mistral-nemo-12b"),
    ("mistral-small-24b", "mistral-small-24b"), ("phi-3.5-mini", "phi-3.5-mini"),
    ("qwen1.5-moe-a2.7b", "qwen1.5-moe-a2.7b-gptq-int4"),
])
def test_published_config_gives_the_preset(preset, folder):
    from_file, expected = load(folder), get_preset(preset)
    assert replace(from_file, name=expected.name, source=expected.source, architecture=expected.architecture) == expected


# KV bytes per token, bf16, all layers, derived by hand: layers x 2 (K and V) x kv_heads x head_dim x 2 bytes,
# MLA: layers x (kv_lora_rank + qk_rope_head_dim) x 2 bytes.
@pytest.mark.parametrize("folder,kv_bytes", [
    ("mixtral-8x7b", 32 * 2 * 8 * 128 * BF16),
    ("mixtral-8x22b", 56 * 2 * 8 * 128 * BF16),
    ("qwen3-30b-a3b", 48 * 2 * 4 * 128 * BF16),
    ("qwen3-235b-a22b", 94 * 2 * 4 * 128 * BF16),
    ("qwen3-32b", 64 * 2 * 8 * 128 * BF16),
    ("qwen3-vl-8b", 36 * 2 * 8 * 128 * BF16),
    ("qwen2.5-vl-7b", 28 * 2 * 4 * 128 * BF16),
    ("qwen1.5-moe-a2.7b-gptq-int4", 24 * 2 * 16 * 128 * BF16),
    ("gpt-oss-20b", 24 * 2 * 8 * 64 * BF16),
    ("gpt-oss-120b", 36 * 2 * 8 * 64 * BF16),
    ("phi-3-mini-4k", 32 * 2 * 32 * 96 * BF16),
    ("deepseek-v2-lite", 27 * (512 + 64) * BF16),
    ("deepseek-v2", 60 * (512 + 64) * BF16),
    ("deepseek-r1", 61 * (512 + 64) * BF16),
    ("llama-4-scout", 48 * 2 * 8 * 128 * BF16),
    ("glm-4-9b-0414", 40 * 2 * 2 * 128 * BF16),
    ("glm-4.5-air", 46 * 2 * 8 * 128 * BF16),
    ("mistral-nemo-12b", 40 * 2 * 8 * 128 * BF16),
    ("mistral-small-24b", 40 * 2 * 8 * 128 * BF16),
])
def test_kv_bytes_per_token_by_hand(folder, kv_bytes):
    assert estimator(load(folder)).kv_bytes_per_token == kv_bytes


def agrees(ours: float, published: float, unit: float) -> bool:
    """Within 1% of a published figure, or within one unit of its last stated digit (a figure given as 3.3B or
    37B is rounded or truncated to that digit)."""
    return abs(ours - published) <= max(0.01 * published, unit)


# (folder, published total, published active, unit of the last digit, whose convention). Mistral, Qwen and
# Meta count the embedding table and the LM head in "active"; DeepSeek and OpenAI leave the input embedding
# table out (OpenAI's gpt-oss model card: 3.61B active of which 1.16B embedding + unembedding split evenly).
# Zhipu does not say; GLM-4.5-Air's 12B fits a count without either table (12.18B).
PUBLISHED = [
    ("mixtral-8x7b", 46.7e9, 12.9e9, 0.1e9, "both"),
    ("mixtral-8x22b", 141e9, 39e9, 1e9, "both"),
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.1e9, "both"),
    ("qwen3-235b-a22b", 235e9, 22e9, 1e9, "both"),
    ("qwen1.5-moe-a2.7b-gptq-int4", 14.3e9, 2.7e9, 0.1e9, "both"),
    ("llama-4-scout", 108e9, 17e9, 1e9, "both"),
    ("llama-4-maverick", 400e9, 17e9, 1e9, "both"),
    ("gpt-oss-20b", 20.91e9, 3.61e9, 0.01e9, "no input embedding"),
    ("gpt-oss-120b", 116.83e9, 5.13e9, 0.01e9, "no input embedding"),
    ("deepseek-v3", 671e9, 37e9, 1e9, "no input embedding"),
    ("deepseek-v2", 236e9, 21e9, 1e9, "no input embedding"),
    ("deepseek-v2-lite", 15.7e9, 2.4e9, 0.1e9, "no input embedding"),
    ("glm-4.5-air", 106e9, 12e9, 1e9, "no embeddings"),
]


@pytest.mark.parametrize("folder,total,active,unit,convention", PUBLISHED)
def test_parameter_counts_match_the_published_ones(folder, total, active, unit, convention):
    m = load(folder)
    tables_left_out = {"both": 0, "no input embedding": 1, "no embeddings": 2}[convention]
    ours_active = m.active_params() - tables_left_out * m.vocab_size * m.d_model
    assert agrees(m.total_params(), total, unit), m.total_params()
    assert agrees(ours_active, active, unit), ours_active


def test_mixtral_counts_by_hand():
    m = load("mixtral-8x7b")
    attention = 4096 * (4096 + 2 * 1024) + 4096 * 4096
    expert, router, norms = 3 * 4096 * 14336, 4096 * 8, 2 * 4096
    embeddings = 2 * 32000 * 4096
    assert m.total_params() == 32 * (attention + 8 * expert + router + norms) + embeddings + 4096
    assert m.active_params() == 32 * (attention + 2 * expert + router + norms) + embeddings + 4096


def test_rows_carry_params_and_active_params():
    m = load("qwen3-30b-a3b")
    row = estimator(m).row(1, 4096)
    assert (row["params"], row["active_params"]) == (m.total_params(), m.active_params())
    assert row["active_params"] < row["params"]
    dense = estimator(load("qwen3-8b")).row(1, 4096)
    assert dense["params"] == dense["active_params"]


def test_preset_rows_list_every_preset_with_counts():
    rows = {row["name"]: row for row in preset_rows()}
    assert rows["mixtral-8x7b"]["experts"] == "2/8" and rows["deepseek-v3"]["experts"] == "8/256 + shared"
    assert rows["gpt-oss-20b"]["active_params"] < rows["gpt-oss-20b"]["params"]
    assert rows["llama-3.1-8b"]["kv_bytes_per_token_bf16"] == 32 * 2 * 8 * 128 * BF16


# --- MoE layer patterns ------------------------------------------------------------------------------------
def test_llama4_maverick_interleaves_moe_and_scout_is_all_moe():
    maverick, scout = load("llama-4-maverick"), load("llama-4-scout")
    assert [maverick.ffn.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert maverick.ffn.moe_layer_count(0, 48) == 24 and scout.ffn.moe_layer_count(0, 48) == 48
    # Maverick's dense layers are intermediate_size_mlp wide; experts and the shared expert intermediate_size.
    d = 5120
    attention = d * (40 * 128 + 2 * 8 * 128) + 40 * 128 * d
    dense, expert, router = 3 * d * 16384, 3 * d * 8192, d * 128
    layers = 48 * (attention + 2 * d) + 24 * dense + 24 * (128 * expert + expert + router)
    assert maverick.total_params() == layers + 2 * 202048 * d + d


def test_qwen_moe_sparse_step_and_mlp_only_layers():
    config = {**json.loads((CONFIGS / "qwen3-30b-a3b" / "config.json").read_text()),
              "decoder_sparse_step": 2, "mlp_only_layers": [1, 3]}
    ffn = model_from_config(config).ffn
    # MoE where (i + 1) % 2 == 0 and i not in mlp_only_layers: 5, 7, 9, ...
    assert [i for i in range(8) if ffn.is_moe_layer(i)] == [5, 7]
    assert ffn.moe_layer_count(0, 48) == 24 - 2


def test_qwen2_moe_shared_expert_width():
    ffn = load("qwen1.5-moe-a2.7b-gptq-int4").ffn
    assert ffn.shared_width() == 5632 and ffn.moe_layer_params(2048) == (60 * 3 * 2048 * 1408 + 3 * 2048 * 5632
                                                                         + 2048 * 60)


def test_deepseek_v2_lite_has_no_query_compression():
    m = load("deepseek-v2-lite")
    assert m.attention.q_lora_rank == 0 and m.ffn.n_dense_layers == 1 and m.ffn.n_shared_experts == 2


# --- attention patterns -------------------------------------------------------------------------------------
def test_gpt_oss_alternates_128_token_windows():
    m = load("gpt-oss-20b")
    assert m.layer_windows[:4] == (128, None, 128, None) and m.layer_windows.count(None) == 12
    est = estimator(m)
    # At 4096 tokens, 12 full layers hold 4096 tokens each, 12 sliding layers 128.
    per_token_layer = 2 * 8 * 64 * BF16
    assert est.kv_cache_bytes(1, 4096) == per_token_layer * (12 * 4096 + 12 * 128)


def test_phi3_window_on_every_layer_and_phi35_window_beyond_context_is_none():
    assert set(load("phi-3-mini-4k").layer_windows) == {2047}
    assert set(load("phi-3.5-mini").layer_windows) == {None}  # 262144 > 131072 positions


def test_llama4_chunked_layers_hold_at_most_a_chunk():
    m = load("llama-4-scout")
    assert m.chunked and m.layer_windows[:4] == (8192, 8192, 8192, None) and m.layer_windows.count(None) == 12
    est, per_token_layer = estimator(m), 2 * 8 * 128 * BF16
    context = 100_000
    assert est.kv_cache_bytes(1, context) == per_token_layer * (36 * 8192 + 12 * context)


def test_llama4_chunked_attention_flops_by_hand():
    m = load("llama-4-scout")
    est, chunk, pair = estimator(m), 8192, 4 * 40 * 128
    # Decode at 0-based position 10000: a chunked layer attends 10000 mod 8192 + 1 = 1809 keys, a global 10001.
    assert est.decode_attention_flops(10000) == pair * (36 * 1809 + 12 * 10001)
    # Prefill of 20000 tokens: each chunked layer attends two whole chunks (1 + ... + 8192 each) and then
    # 1 + ... + 3616; a global layer 1 + ... + 20000.
    chunked = 2 * chunk * (chunk + 1) // 2 + 3616 * 3617 // 2
    assert chunked_keys_sum(20000, chunk) == chunked
    assert est.prefill_attention_flops(1, 20000) == pair * (36 * chunked + 12 * 20000 * 20001 // 2)


def test_chunked_differs_from_sliding_with_the_same_span():
    m = load("llama-4-scout")
    sliding = estimator(replace(m, chunked=False))
    # Past one chunk a sliding window attends a full window; a chunk starts over.
    assert estimator(m).decode_attention_flops(8192) < sliding.decode_attention_flops(8192)
    assert "chunked(8192)/global" in m.kind_label


# --- config formats ----------------------------------------------------------------------------------------
def test_transformers5_form_equals_the_4x_form():
    four, five = load("qwen3-8b"), load("qwen3-8b-transformers5")
    assert replace(five, name=four.name, source=four.source) == four


def test_layer_types_need_sliding_window_only_when_a_layer_slides():
    config = json.loads((CONFIGS / "qwen3-8b-transformers5" / "config.json").read_text())
    config["layer_types"] = ["sliding_attention"] + config["layer_types"][1:]
    with pytest.raises(InputError, match="lacks required field 'sliding_window'"):
        model_from_config(config)


def test_text_config_wrappers():
    vl = load("qwen3-vl-8b")  # transformers 5: text_config, tie_word_embeddings beside it
    assert (vl.n_layers, vl.d_model, vl.attention.head_dim) == (36, 4096, 128) and not vl.tie_embeddings
    assert vl.total_params() == get_preset("qwen3-8b").total_params()  # the same language model as Qwen3-8B
    qwen25 = load("qwen2.5-vl-7b")  # transformers 4: the language model's fields at the top
    assert qwen25.attention.qkv_bias and qwen25.total_params() == get_preset("qwen2.5-7b").total_params()


def test_unknown_model_type_with_standard_fields_loads_with_one_warning():
    config = {**json.loads((CONFIGS / "llama-3.1-8b" / "config.json").read_text()), "model_type": "my_llama"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = model_from_config(config)
    assert len(caught) == 1 and "my_llama" in str(caught[0].message) and "dense" in str(caught[0].message)
    assert m.total_params() == get_preset("llama-3.1-8b").total_params()


def test_unknown_model_type_refused_when_a_field_is_missing_or_it_has_experts():
    config = {**json.loads((CONFIGS / "llama-3.1-8b" / "config.json").read_text()), "model_type": "my_llama"}
    del config["intermediate_size"]
    with pytest.raises(InputError, match="lacks intermediate_size"):
        model_from_config(config)
    with pytest.raises(InputError, match="num_local_experts"):
        model_from_config({**config, "intermediate_size": 14336, "num_local_experts": 8})
