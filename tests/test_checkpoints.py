"""Quantized checkpoints (weight bytes from quantization_config), safetensors headers, and the local HF cache."""

import json
import struct
from pathlib import Path

import pytest

from kvplan.families import model_from_config
from kvplan.families.quantization import checkpoint_weights, weight_groups
from kvplan.families.safetensors import read_header, weight_bytes_by_dtype
from kvplan.presets import load_model
from kvplan.units import InputError

CONFIGS = Path(__file__).parent / "configs"


def config(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


def weights(name: str, **change):
    c = {**config(name), **change}
    return checkpoint_weights(c, model_from_config(c)), weight_groups(model_from_config(c))


def test_unquantized_checkpoint_is_its_dtype():
    w, groups = weights("qwen3-8b")
    assert w.format == "bfloat16" and w.weight_bytes == 2 * sum(groups.values()) and w.quantized_params == 0


def test_mxfp4_quantizes_only_the_experts():
    # gpt-oss keeps attention, router, embeddings and LM head in bf16 (modules_to_not_convert).
    w, g = weights("gpt-oss-20b")
    assert w.format == "mxfp4" and w.quantized_params == g["mlp.experts"]
    assert w.weight_bytes == int(4.25 / 8 * g["mlp.experts"] + 2 * (sum(g.values()) - g["mlp.experts"]))
    assert 13.5e9 < w.weight_bytes < 14.0e9  # the published checkpoint's files hold 13.8 GB


def test_fp8_block_scales():
    w, g = weights("qwen3-30b-a3b-fp8")
    linear = g["self_attn"] + g["mlp.experts"]  # lm_head, router and norms are listed as not converted
    assert w.format == "fp8 (block 128x128)" and w.quantized_params == linear
    assert w.weight_bytes == int((1 + 4 / (128 * 128)) * linear + 2 * (sum(g.values()) - linear))


def test_gptq_int4_group_scales_and_zeros():
    w, g = weights("qwen1.5-moe-a2.7b-gptq-int4")
    linear = g["self_attn"] + g["mlp.experts"] + g["mlp.shared_expert"]
    per_weight = 0.5 + (2 + 0.5) / 128  # int4, plus an fp16 scale and an int4 zero per 128 weights
    assert w.format == "gptq int4 g128" and w.quantized_params == linear
    assert w.weight_bytes == int(per_weight * linear + 2 * (sum(g.values()) - linear))


@pytest.mark.parametrize("quantization,label,per_weight", [
    ({"quant_method": "awq", "bits": 4, "group_size": 64}, "awq int4 g64", 0.5 + 2.5 / 64),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bitsandbytes nf4",
     0.5 + 4 / 64),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes int8", 1.0),
    ({"quant_method": "compressed-tensors", "ignore": ["lm_head"], "config_groups": {"group_0": {
        "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}}},
     "compressed-tensors int4 g128", 0.5 + 2 / 128),
])
def test_other_formats(quantization, label, per_weight):
    w, g = weights("llama-3.1-8b", quantization_config=quantization)
    linear = g["self_attn"] + g["mlp"]
    assert w.format == label and w.quantized_params == linear
    assert w.weight_bytes == int(per_weight * linear + 2 * (sum(g.values()) - linear))


def test_unknown_quantization_is_named():
    with pytest.raises(InputError, match="quant_method 'hqq' is not supported"):
        weights("llama-3.1-8b", quantization_config={"quant_method": "hqq"})


def write_safetensors(path: Path, tensors: dict) -> None:
    header = json.dumps(tensors).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\\0" * 16)


def test_safetensors_headers_give_bytes_by_dtype(tmp_path):
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]},
        "b": {"dtype": "F8_E4M3", "shape": [16, 16], "data_offsets": [64, 320]}})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {
        "c": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
        "d": {"dtype": "U8", "shape": [2, 5], "data_offsets": [12, 22]}})
    assert weight_bytes_by_dtype(tmp_path) == {"BF16": 64, "F8_E4M3": 256, "F32": 12, "U8": 10}


def test_safetensors_bad_header_says_so(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        read_header(tmp_path / "x.safetensors")


def test_model_id_from_the_local_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--Qwen--Qwen3-8B"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123" / "config.json").write_text((CONFIGS / "qwen3-8b" / "config.json").read_text())
    m = load_model("Qwen/Qwen3-8B")
    assert m.n_layers == 36 and m.attention.head_dim == 128


def test_model_id_not_cached_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="huggingface-cli download Qwen/Qwen3-8B config.json") as error:
        load_model("Qwen/Qwen3-8B")
    assert "\n" not in str(error.value)
