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
    ("qwen1.5-moe-a2.7b", "qwen1.5-moe-a2.7b-gptq-int4"), ("qwen3-next-80b-a3b", "qwen3-next-80b-a3b"),
    ("qwen3.5-397b-a17b", "qwen3.5-397b-a17b"), ("nemotron-h-56b", "nemotron-h-56b"), ("falcon-h1-7b", "falcon-h1-7b"),
    ("falcon-h1-34b", "falcon-h1-34b"), ("jamba-v0.1", "jamba-v0.1"), ("jamba-1.5-mini", "jamba-1.5-mini"),
    ("jamba-1.5-large", "jamba-1.5-large"),
])
def test_published_config_gives_the_preset(preset, folder):
    from_file, expected = load(folder), get_preset(preset)
    if folder.endswith("-gptq-int4"):  # a quantized upload of the preset's model: the same but for its weights' format
        from_file = replace(from_file, weights=None)
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
    # Hybrids. Qwen's "80B total, 3B activated" for Qwen3-Next fits a count without either table (3.25B; 3.87B
    # with both); NVIDIA gives Nemotron 3 Nano's 3.6B "including embeddings".
    ("qwen3-next-80b-a3b", 80e9, 3e9, 1e9, "no embeddings"),
    ("qwen3.5-397b-a17b", 397e9, 17e9, 1e9, "both"),
    ("qwen3.5-27b", 27e9, 27e9, 1e9, "both"),
    ("nemotron-h-56b", 56e9, 56e9, 1e9, "both"),
    ("nemotron-3-nano-30b-a3b", 31.6e9, 3.6e9, 0.1e9, "both"),
    ("falcon-h1-7b", 7e9, 7e9, 1e9, "both"),
    # The weights' bf16 bytes in model.safetensors.index.json over 2 (total_size, as a public test of hybrid
    # parameter counts records it, tests/configs README): 33.643B.
    ("falcon-h1-34b", 33.643e9, 33.643e9, 0.001e9, "both"),
    # AI21's cards: Jamba-v0.1 and 1.5-Mini 52B total, 12B active; 1.5-Large 398B total, 94B active.
    ("jamba-v0.1", 52e9, 12e9, 1e9, "both"),
    ("jamba-1.5-mini", 52e9, 12e9, 1e9, "both"),
    ("jamba-1.5-large", 398e9, 94e9, 1e9, "both"),
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


# --- hybrids with recurrent layers ---------------------------------------------------------------------------
# Cache per token (the attention layers, bf16) and recurrent state per sequence (bf16, or the config's
# mamba_ssm_dtype for the state), derived by hand: GDN holds a key_head_dim x head_dim state per value head and
# the last 3 inputs of q, k, v; Mamba-2 a head_dim x state_size state per head and the last 3 inputs of x, B, C;
# Mamba-1 (Jamba) a state_size state per channel and the last 3 inputs of x.
def gdn_state(heads, key_heads, dk, dv, state_bytes=BF16):
    return heads * dk * dv * state_bytes + (2 * key_heads * dk + heads * dv) * 3 * BF16


def mamba2_state(heads, head_dim, state, groups, state_bytes=BF16):
    return heads * head_dim * state * state_bytes + (heads * head_dim + 2 * groups * state) * 3 * BF16


def mamba_state(d_inner, state):
    return d_inner * state * BF16 + d_inner * 3 * BF16  # Mamba-1: d_inner x state, and the last 3 inputs of x


@pytest.mark.parametrize("folder,kv_bytes,state_bytes", [
    ("qwen3-next-80b-a3b", 12 * 2 * 2 * 256 * BF16, 36 * gdn_state(32, 16, 128, 128)),
    ("qwen3.5-397b-a17b", 15 * 2 * 2 * 256 * BF16, 45 * gdn_state(64, 16, 128, 128, state_bytes=4)),
    ("qwen3.5-27b", 16 * 2 * 4 * 256 * BF16, 48 * gdn_state(48, 16, 128, 128, state_bytes=4)),
    ("nemotron-h-56b", 10 * 2 * 8 * 128 * BF16, 54 * mamba2_state(256, 64, 256, 8)),
    ("nemotron-3-nano-30b-a3b", 6 * 2 * 2 * 128 * BF16, 23 * mamba2_state(64, 64, 128, 8, state_bytes=4)),
    ("falcon-h1-7b", 44 * 2 * 2 * 128 * BF16, 44 * mamba2_state(24, 128, 256, 1)),
    ("falcon-h1-34b", 72 * 2 * 4 * 128 * BF16, 72 * mamba2_state(32, 128, 256, 2)),
    ("jamba-v0.1", 4 * 2 * 8 * 128 * BF16, 28 * mamba_state(8192, 16)),
    ("jamba-1.5-mini", 4 * 2 * 8 * 128 * BF16, 28 * mamba_state(8192, 16)),
    ("jamba-1.5-large", 9 * 2 * 8 * 128 * BF16, 63 * mamba_state(16384, 16)),
])
def test_hybrid_cache_and_state_by_hand(folder, kv_bytes, state_bytes):
    est = estimator(load(folder))
    assert (est.kv_bytes_per_token, est.state_bytes_per_sequence) == (kv_bytes, state_bytes)
    assert est.kv_cache_bytes(1, 8192) == 8192 * kv_bytes + state_bytes


def test_qwen3_next_layer_counts_by_hand():
    """One Gated DeltaNet layer with its MoE feed-forward and two norms is 1,648,531,648 weights as transformers
    prints Qwen3-Next's module summary (a public model note of Qwen/Qwen3-Next-80B-A3B-Instruct, tests/configs
    README); kvplan leaves out the shared expert's gate (d_model weights)."""
    m, d = load("qwen3-next-80b-a3b"), 2048
    gdn = m.recurrent.params(d)
    assert gdn == d * (2 * 16 * 128 + 2 * 32 * 128) + d * 64 + 8192 * 4 + 32 + 32 + 128 + 32 * 128 * d
    assert gdn + m.ffn.moe_layer_params(d) + 2 * d == 1_648_531_648 - d
    gated_attention = d * 16 * 256 * 2 + 2 * d * 2 * 256 + 16 * 256 * d  # q and its gate, k, v, o
    assert m.attention.params(d) == gated_attention
    assert m.total_params() == 36 * gdn + 12 * gated_attention + 48 * (m.ffn.moe_layer_params(d) + 2 * d) + d + \
        2 * 151936 * d


def test_nemotron_h_blocks_by_hand():
    m, d = load("nemotron-h-56b"), 8192
    pattern = json.loads((CONFIGS / "nemotron-h-56b" / "config.json").read_text())["hybrid_override_pattern"]
    assert [m.layer_mixer(i) for i in range(5)] == ["recurrent", "none", "recurrent", "none", "recurrent"]
    assert (pattern.count("M"), pattern.count("*"), pattern.count("-")) == (54, 10, 54)
    assert m.ffn.layer_count(0, 118) == 54 and not m.ffn.gated
    inner, conv = 256 * 64, 256 * 64 + 2 * 8 * 256
    mamba = d * (2 * inner + 2 * 8 * 256 + 256) + conv * 4 + conv + 3 * 256 + inner + inner * d
    attention = d * (64 * 128 + 2 * 8 * 128) + 64 * 128 * d
    mlp = 2 * d * 32768  # up and down, squared ReLU
    assert m.total_params() == 54 * mamba + 10 * attention + 54 * mlp + 119 * d + 2 * 131072 * d


def test_falcon_h1_runs_attention_and_mamba_side_by_side():
    m, d = load("falcon-h1-7b"), 3072
    assert m.layer_mixers == ("parallel",) * 44 and m.kind_label == "gqa(kv_heads=2) || mamba2(heads=24,state=256)"
    mamba = d * (2 * 3072 + 2 * 256 + 24) + (3072 + 2 * 256) * 5 + 3 * 24 + 3072 * d  # no gated norm (default)
    attention = d * (12 * 128 + 2 * 2 * 128) + 12 * 128 * d
    assert m.total_params() == 44 * (mamba + attention + 3 * d * 12288 + 2 * d) + d + 2 * 130048 * d


def test_jamba_layers_by_hand():
    """Jamba-v0.1 as transformers' JambaConfig lays it out: attention where i % 8 == 4, experts where i % 2 == 1;
    the Mamba mixer's weights as JambaMambaMixer declares them."""
    m, d = load("jamba-v0.1"), 4096
    assert m.attention_layer_ids == (4, 12, 20, 28) and len(m.recurrent_layer_ids) == 28
    assert [i for i in range(32) if m.ffn.is_moe_layer(i)] == list(range(1, 32, 2))
    assert m.recurrent.dt_rank == 256  # "auto": ceil(4096 / 16)
    inner, n, r = 8192, 16, 256
    mamba = (d * 2 * inner + inner * 4 + inner + inner * (r + 2 * n) + r * inner + inner + inner * n + inner
             + inner * d + r + 2 * n)  # in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj, dt/B/C norms
    attention = d * (32 * 128 + 2 * 8 * 128) + 32 * 128 * d
    mlp, router = 3 * d * 14336, d * 16
    layers = 28 * mamba + 4 * attention + 16 * mlp + 16 * (16 * mlp + router) + 32 * 2 * d
    assert m.total_params() == layers + d + 2 * 65536 * d
    assert m.active_params() == m.total_params() - 16 * 14 * mlp


def test_jamba_offsets_must_fall_inside_their_periods():
    config = json.loads((CONFIGS / "jamba-v0.1" / "config.json").read_text())
    with pytest.raises(InputError, match="attn_layer_offset .8. must be smaller than attn_layer_period .8."):
        model_from_config({**config, "attn_layer_offset": 8})
    dense = model_from_config({**config, "num_experts": 1})
    assert not dense.ffn.is_moe and dense.total_params() < load("jamba-v0.1").total_params()


def test_nemotron_3_nano_experts_are_ungated_blocks():
    m = load("nemotron-3-nano-30b-a3b")
    assert m.ffn.moe_layer_count(0, m.n_layers) == 23 and m.ffn.dense_layer_count(m.n_layers) == 0
    assert m.ffn.expert_params(2688) == 2 * 2688 * 1856 and m.ffn.shared_width() == 3712
    assert m.recurrent.state_dtype == "fp32"


def test_hybrid_layer_types_must_be_known():
    config = json.loads((CONFIGS / "qwen3-next-80b-a3b" / "config.json").read_text())
    with pytest.raises(InputError, match="layer_types holds sliding_attention"):
        model_from_config({**config, "layer_types": ["sliding_attention"] * 48})
    with pytest.raises(InputError, match="hybrid_override_pattern"):
        config = json.loads((CONFIGS / "nemotron-h-56b" / "config.json").read_text())
        model_from_config({**config, "hybrid_override_pattern": "M*"})
