"""config.json parsing for every supported architecture, from fixtures in the published format (tests/configs/)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kvplan.kinds import DSA, MLA, DenseAttention
from kvplan.families import model_from_config, model_from_file
from kvplan.presets import PRESETS, get_preset, load_model
from kvplan.units import InputError

CONFIGS = Path(__file__).parent / "configs"


def fixture(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


@pytest.mark.parametrize("name", ["llama-3.1-8b", "mistral-7b-v0.1", "qwen2.5-7b", "gemma-3-27b", "deepseek-v3",
                                  "deepseek-v3.2-exp", "modernbert-base"])
def test_published_config_gives_the_preset(name):
    # The preset and the full published config.json go through one parser and must describe the same model.
    from_file = model_from_file(CONFIGS / name)
    preset = get_preset(name)
    assert replace(from_file, name=preset.name, source=preset.source, architecture=preset.architecture) == preset


def test_llama():
    m = model_from_file(CONFIGS / "llama-3.1-8b" / "config.json")
    assert m.attention == DenseAttention(n_heads=32, n_kv_heads=8, head_dim=4096 // 32)
    assert (m.n_layers, m.d_model, m.vocab_size, m.max_positions) == (32, 4096, 128256, 131072)
    assert m.ffn.intermediate == 14336 and not m.ffn.is_moe and not m.tie_embeddings
    assert set(m.layer_windows) == {None}


def test_mistral_window_on_every_layer():
    m = model_from_file(CONFIGS / "mistral-7b-v0.1")
    assert m.layer_windows == (4096,) * 32


def test_qwen2_has_qkv_bias_and_no_window_when_disabled():
    m = model_from_file(CONFIGS / "qwen2.5-7b")
    assert m.attention.qkv_bias and m.attention.n_kv_heads == 4
    assert set(m.layer_windows) == {None}  # sliding_window is set but use_sliding_window is false
    # Bias adds q + k + v outputs per layer: 28 x (3584 + 2 x 512).
    no_bias = replace(m, attention=replace(m.attention, qkv_bias=False))
    assert m.total_params() - no_bias.total_params() == 28 * (3584 + 2 * 512)


def test_qwen2_sliding_window_from_max_window_layers():
    config = {**fixture("qwen2.5-7b"), "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}
    m = model_from_config(config)
    assert m.layer_windows == (None,) * 20 + (4096,) * 8


def test_qwen3_explicit_head_dim():
    m = model_from_file(CONFIGS / "qwen3-8b")
    assert m.attention == DenseAttention(n_heads=32, n_kv_heads=8, head_dim=128)
    assert (m.n_layers, m.max_positions, m.vocab_size) == (36, 40960, 151936)


def test_gemma2_alternates_local_and_global():
    m = model_from_file(CONFIGS / "gemma-2-9b")
    assert m.attention.head_dim == 256  # explicit head_dim, not 3584 / 16
    assert m.layer_windows[:4] == (4096, None, 4096, None) and m.layer_windows.count(None) == 21
    assert m.tie_embeddings  # Gemma ties its embeddings by default


def test_gemma3_multimodal_wrapper_and_class_defaults():
    # text_config holds the language model; vocab_size and max_position_embeddings are left to the class defaults.
    config = fixture("gemma-3-27b")
    assert "vocab_size" not in config["text_config"]
    m = model_from_config(config)
    assert (m.n_layers, m.d_model, m.vocab_size, m.max_positions) == (62, 5376, 262208, 131072)
    assert m.attention == DenseAttention(n_heads=32, n_kv_heads=16, head_dim=128)
    assert [i for i, w in enumerate(m.layer_windows) if w is None] == [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]


def test_gemma3_layer_types():
    config = fixture("gemma-3-1b-layer-types")
    m = model_from_config(config)
    expected = tuple(None if kind == "full_attention" else 512 for kind in config["layer_types"])
    assert m.layer_windows == expected and m.layer_windows.count(None) == 26 // 6
    assert m.attention.kind == "mqa"
    # A layer_types list that disagrees with the depth is an error that says so.
    with pytest.raises(InputError, match="layer_types has 25 entries for 26 layers"):
        model_from_config({**config, "layer_types": config["layer_types"][:-1]})


def test_deepseek_v3_mla_and_moe():
    m = model_from_file(CONFIGS / "deepseek-v3")
    assert m.attention == MLA(n_heads=128, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                              v_head_dim=128, q_lora_rank=1536)
    f = m.ffn
    assert (f.n_experts, f.n_active_experts, f.n_shared_experts, f.moe_intermediate, f.n_dense_layers) == (256, 8, 1, 2048, 3)


def test_deepseek_v32_dsa():
    m = model_from_file(CONFIGS / "deepseek-v3.2-exp")
    assert isinstance(m.attention, DSA)
    assert (m.attention.index_n_heads, m.attention.index_head_dim, m.attention.index_topk) == (64, 128, 2048)
    assert m.attention.mla == get_preset("deepseek-v3").attention


def test_modernbert_encoder():
    m = model_from_file(CONFIGS / "modernbert-base")
    assert m.is_encoder and m.tie_embeddings
    assert m.layer_windows == tuple(None if i % 3 == 0 else 128 for i in range(22))


def test_file_and_folder_are_the_same():
    assert model_from_file(CONFIGS / "qwen3-8b") == model_from_file(CONFIGS / "qwen3-8b" / "config.json")


def test_load_model_takes_a_path_or_a_name():
    assert load_model(str(CONFIGS / "llama-3.1-8b")).n_layers == 32
    assert load_model("Llama-3.1-8B") is get_preset("llama-3.1-8b")  # names are case-insensitive


def test_broken_json_says_so():
    with pytest.raises(InputError, match="not valid JSON"):
        model_from_file(CONFIGS / "broken")


def test_missing_file_says_so(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        model_from_file(tmp_path)  # a folder without config.json


@pytest.mark.parametrize("name,field", [("llama-3.1-8b", "num_hidden_layers"), ("llama-3.1-8b", "vocab_size"),
                                        ("deepseek-v3", "kv_lora_rank"), ("deepseek-v3.2-exp", "index_topk"),
                                        ("modernbert-base", "local_attention"), ("mistral-7b-v0.1", "intermediate_size")])
def test_missing_field_is_named(tmp_path, name, field):
    config = fixture(name)
    del config[field]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=f"lacks required field '{field}'"):
        model_from_file(tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gpt_neox", "vocab_size": None}, "model_type 'gpt_neox' is not supported and the config lacks "
                                                     "vocab_size"),
    ({"num_attention_heads": 32, "num_key_value_heads": 5}, "must be a multiple of num_key_value_heads"),
    ({"num_hidden_layers": "thirty-two"}, "'num_hidden_layers' must be a whole number"),
    ({"num_hidden_layers": 0}, "must be positive"),
    ({"tie_word_embeddings": "yes"}, "'tie_word_embeddings' must be true or false"),
    ({"vocab_size": 0}, "'vocab_size' must be positive"),
    ({"intermediate_size": 0}, "'intermediate_size' must be positive"),
    ({"layer_types": ["chunked_attention"] * 32, "sliding_window": 4096}, "layer_types holds chunked_attention"),
])
def test_malformed_fields_are_named(change, message):
    with pytest.raises(InputError, match=message):
        model_from_config({**fixture("llama-3.1-8b"), **change})


def test_moe_with_more_active_than_routed_experts_is_refused():
    from kvplan.presets import PRESETS

    config = {**PRESETS["deepseek-v3"][0], "num_experts_per_tok": 1000}
    with pytest.raises(InputError, match="num_experts_per_tok"):
        model_from_config(config)


def test_config_not_an_object():
    with pytest.raises(InputError, match="must be a JSON object"):
        model_from_config([1, 2, 3])


def test_every_preset_names_its_source():
    for name, (config, source) in PRESETS.items():
        assert source and get_preset(name).source == source
