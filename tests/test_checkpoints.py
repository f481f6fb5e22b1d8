"""Quantized checkpoints (weight bytes from quantization_config), safetensors headers, and the local HF cache; the
Estimator's rows use those bytes and say which format they assumed (weights_format)."""

import json
import struct
from pathlib import Path

import pytest

from kvplan.api import estimators
from kvplan.estimator import Deployment, Estimator
from kvplan.families import model_from_config, model_from_file
from kvplan.families.quantization import checkpoint_weights
from kvplan.families.safetensors import read_header, weight_bytes_by_dtype
from kvplan.hardware import get_gpu
from kvplan.presets import get_preset, load_model
from kvplan.units import InputError

CONFIGS = Path(__file__).parent / "configs"
H100 = get_gpu("h100-sxm")
# A tiny Llama whose matrices are whole 128 x 128 blocks and 128-row groups, so that block scales and group
# scales come out exact: d 256, 2 query and 2 KV heads of 128, intermediate 512, vocabulary 512, 2 layers.
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 512, "vocab_size": 512,
        "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
TINY_ATTENTION = 2 * 4 * 256 * 256  # q, k, v, o of both layers
TINY_MLP = 2 * 3 * 256 * 512  # gate, up, down of both layers
TINY_REST = 2 * 512 * 256 + (2 * 2 + 1) * 256  # embedding, LM head, 2 norms per layer and the final one


def config(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


def weights(name: str, **change):
    c = {**config(name), **change}
    model = model_from_config(c)
    return checkpoint_weights(c, model), model.weight_groups()


def row(model, **deployment) -> dict:
    return Estimator(model, Deployment(H100, **deployment)).row(1, 1024)


def test_unquantized_checkpoint_takes_the_weight_dtype():
    c = config("qwen3-8b")
    model = model_from_config(c)
    assert checkpoint_weights(c, model) is None and model.weights is None
    r = row(model)
    assert r["weights_format"] == "bf16 (no quantization_config)" and r["weights_bytes"] == 2 * model.total_params()


def test_mxfp4_quantizes_only_the_experts():
    # gpt-oss keeps attention, router, embeddings and LM head in bf16 (modules_to_not_convert).
    w, g = weights("gpt-oss-20b")
    assert w.label == "mxfp4 experts, bf16 rest (quantization_config)" and w.gemm == "bf16"
    assert w.bytes_of(g) == round(4.25 / 8 * g["mlp.experts"] + 2 * (sum(g.values()) - g["mlp.experts"]))
    assert 13.5e9 < w.bytes_of(g) < 14.0e9  # the published checkpoint's files hold 13.8 GB


def test_fp8_block_scales():
    w, g = weights("qwen3-30b-a3b-fp8")
    linear = g["self_attn"] + g["mlp.experts"]  # lm_head, router and norms are listed as not converted
    assert w.label == "fp8 block 128x128 (quantization_config)" and w.gemm == "fp8"
    assert w.bytes_of(g) == round((1 + 4 / (128 * 128)) * linear + 2 * (sum(g.values()) - linear))


def test_gptq_int4_group_scales_and_zeros():
    w, g = weights("qwen1.5-moe-a2.7b-gptq-int4")
    linear = g["self_attn"] + g["mlp.experts"] + g["mlp.shared_expert"]
    per_weight = 0.5 + (2 + 0.5) / 128  # int4, plus an fp16 scale and an int4 zero per 128 weights
    assert w.label == "gptq int4 g128 (quantization_config)" and w.gemm == "bf16"
    assert w.bytes_of(g) == round(per_weight * linear + 2 * (sum(g.values()) - linear))


@pytest.mark.parametrize("quantization,name,per_weight,gemm", [
    ({"quant_method": "awq", "bits": 4, "group_size": 64}, "awq int4 g64", 0.5 + 2.5 / 64, "bf16"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bitsandbytes nf4",
     0.5 + 4 / 64, "bf16"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes int8", 1.0, "bf16"),
    ({"quant_method": "compressed-tensors", "ignore": ["lm_head"], "config_groups": {"group_0": {
        "targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}}},
     "compressed-tensors int4 g128", 0.5 + 2 / 128, "bf16"),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
        "input_activations": {"num_bits": 8, "type": "float", "dynamic": True}}}},
     "compressed-tensors float8", 1.0, "fp8"),
])
def test_other_formats(quantization, name, per_weight, gemm):
    w, g = weights("llama-3.1-8b", quantization_config=quantization)
    linear = g["self_attn"] + g["mlp"]
    assert (w.name, w.gemm) == (name, gemm)
    assert w.bytes_of(g) == round(per_weight * linear + 2 * (sum(g.values()) - linear))


def test_unknown_quantization_is_named():
    with pytest.raises(InputError, match="quant_method 'hqq' is not supported"):
        weights("llama-3.1-8b", quantization_config={"quant_method": "hqq"})


@pytest.mark.parametrize("quantization,message", [
    ({"quant_method": "gptq", "bits": "x"}, "bits must be a whole number in \\[1, 16\\], not 'x'"),
    ({"quant_method": "awq", "bits": 4, "group_size": 0}, "group_size must be a whole number"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size must be two whole numbers"),
    ({"quant_method": "fp8", "weight_block_size": [128, 0.5]}, "weight_block_size must be a whole number"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 99}}}},
     "num_bits must be a whole number"),
    ({"quant_method": "mxfp4", "modules_to_not_convert": 7}, "modules_to_not_convert must be a list of module names"),
])
def test_malformed_quantization_config_is_one_input_error(quantization, message):
    with pytest.raises(InputError, match=message):
        weights("llama-3.1-8b", quantization_config=quantization)


def test_malformed_quantization_config_exits_2_in_one_line(tmp_path, run_cli):
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
              "quantization_config": {"quant_method": "gptq", "bits": "x"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli("estimate", "--model", str(tmp_path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "bits" in err


@pytest.mark.parametrize("quantization,label,linear_bytes", [
    # fp8: one byte per weight and an fp32 scale per 128 x 128 block.
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8 block 128x128 (quantization_config)",
     (TINY_ATTENTION + TINY_MLP) * (1 + 4 / (128 * 128))),
    # GPTQ int4: half a byte per weight; per 128 input rows of each output column an fp16 scale and an int4 zero.
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq int4 g128 (quantization_config)",
     (TINY_ATTENTION + TINY_MLP) * (0.5 + 2.5 / 128)),
    # MXFP4 with attention kept in bf16: 4 bits and an 8-bit shared exponent per 32 weights.
    ({"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]},
     "mxfp4 dense MLP, bf16 rest (quantization_config)", TINY_ATTENTION * 2 + TINY_MLP * 4.25 / 8),
])
def test_row_weights_follow_the_quantization_config(quantization, label, linear_bytes):
    model = model_from_config({**TINY, "quantization_config": quantization})
    r = row(model)
    assert r["weights_format"] == label
    assert r["weights_bytes"] == r["weights_bytes_per_gpu"] == round(linear_bytes + 2 * TINY_REST)
    assert r["total_bytes_per_gpu"] == (r["weights_bytes_per_gpu"] + r["kv_cache_bytes_per_gpu"]
                                        + r["activation_bytes_per_gpu"] + r["reserve_bytes_per_gpu"])


def test_explicit_weight_dtype_overrides_the_checkpoint_and_says_so():
    model = model_from_config({**TINY, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})
    r = row(model, weight_format=Deployment.__dataclass_fields__["kv_format"].default)  # bf16, given explicitly
    assert r["weights_format"] == "bf16 (--weight-dtype, over the checkpoint's gptq int4 g128)"
    assert r["weights_bytes"] == 2 * (TINY_ATTENTION + TINY_MLP + TINY_REST)
    fp8 = estimators(model, weight_dtype="fp8")[0].row(1, 1024)
    assert fp8["weights_bytes"] == TINY_ATTENTION + TINY_MLP + TINY_REST
    assert estimators(model)[0].row(1, 1024)["weights_format"] == "gptq int4 g128 (quantization_config)"


def test_quantized_weights_are_what_decode_reads():
    # One decode step of batch 1 reads every weight but the input embedding rows it does not look up; GPTQ's
    # int4 weights (weight-only: bf16 GEMMs) make the memory-bound step that much shorter than bf16's.
    model = model_from_config({**TINY, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})
    quantized, bf16 = (Estimator(model, Deployment(H100, weight_format=f)) for f in (None, row_format("bf16")))
    read = quantized.weights_read_bytes(1)
    assert read == quantized.weights_bytes - (512 - 1) * 256 * 2
    assert bf16.weights_read_bytes(1) - read == pytest.approx((TINY_ATTENTION + TINY_MLP) * (2 - 0.5 - 2.5 / 128))
    assert quantized._gemm == bf16._gemm  # weight-only int4 multiplies in bf16


def row_format(name: str):
    from kvplan.dtypes import FORMATS

    return FORMATS[name]


def test_presets_carry_their_published_formats():
    v3 = estimators("deepseek-v3", gpu="h200", gpus=8)[0]
    assert v3.weights_format.label == "fp8 block 128x128 (quantization_config)" and v3.weights_format.gemm == "fp8"
    groups = get_preset("deepseek-v3").weight_groups()
    linear = groups["self_attn"] + groups["mlp"] + groups["mlp.experts"] + groups["mlp.shared_expert"]
    assert v3.weights_bytes == round(linear * (1 + 4 / 128**2) + 2 * (sum(groups.values()) - linear))
    oss = estimators("gpt-oss-120b")[0]
    assert oss.weights_format.label == "mxfp4 experts, bf16 rest (quantization_config)"


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


@pytest.mark.parametrize("header,message", [
    ([1, 2], "not a JSON object"),
    ({"w": {"dtype": "BF16", "shape": [2, "x"], "data_offsets": [0, 8]}}, "has shape \\[2, 'x'\\]"),
    ({"w": {"dtype": "BF16", "shape": [2**41], "data_offsets": [0, 8]}}, "not a list of whole numbers"),
])
def test_safetensors_malformed_header_is_one_input_error(tmp_path, header, message):
    write_safetensors(tmp_path / "model.safetensors", header)
    with pytest.raises(InputError, match=message):
        weight_bytes_by_dtype(tmp_path)


def test_safetensors_index_without_a_weight_map_object_is_refused(tmp_path, run_cli):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": "nope"}))
    code, out, err = run_cli("estimate", "--model", str(tmp_path))
    assert code == 2 and out == "" and "weight_map must map tensor names to file names" in err


def tiny_checkpoint(folder: Path) -> int:
    """TINY's config.json and its weights written with the safetensors package: linear layers int8 with an fp32
    scale per output row, the rest fp16, in two shards. Returns the bytes of tensor data, counted by hand."""
    numpy = pytest.importorskip("numpy")
    save_file = pytest.importorskip("safetensors.numpy").save_file
    (folder / "config.json").write_text(json.dumps(TINY))
    shapes = {"q_proj": (256, 256), "k_proj": (256, 256), "v_proj": (256, 256), "o_proj": (256, 256)}
    mlp = {"gate_proj": (512, 256), "up_proj": (512, 256), "down_proj": (256, 512)}
    layers = [{}, {}]
    for i, shard in enumerate(layers):
        for module, names in (("self_attn", shapes), ("mlp", mlp)):
            for name, (rows, cols) in names.items():
                shard[f"model.layers.{i}.{module}.{name}.weight"] = numpy.zeros((rows, cols), numpy.int8)
                shard[f"model.layers.{i}.{module}.{name}.weight_scale"] = numpy.zeros((rows, 1), numpy.float32)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shard[f"model.layers.{i}.{norm}.weight"] = numpy.zeros(256, numpy.float16)
    layers[0]["model.embed_tokens.weight"] = numpy.zeros((512, 256), numpy.float16)
    layers[1]["model.norm.weight"] = numpy.zeros(256, numpy.float16)
    layers[1]["lm_head.weight"] = numpy.zeros((512, 256), numpy.float16)
    for i, shard in enumerate(layers):
        save_file(shard, str(folder / f"model-0000{i + 1}-of-00002.safetensors"))
    scale_rows = 2 * (4 * 256 + 512 + 512 + 256)
    return (TINY_ATTENTION + TINY_MLP) * 1 + scale_rows * 4 + TINY_REST * 2


def test_safetensors_folder_gives_exact_bytes_in_the_row(tmp_path):
    expected = tiny_checkpoint(tmp_path)
    model = model_from_file(tmp_path)
    assert model.weights.source == "safetensors headers"
    r = row(model)
    assert r["weights_format"] == "I8+F16+F32 (safetensors headers)"
    assert r["weights_bytes"] == r["weights_bytes_per_gpu"] == expected
    # Over 2 tensor-parallel GPUs each holds half of every matrix and a whole copy of each norm (fp16).
    split = row(model, tp=2)
    assert split["weights_bytes_per_gpu"] == (expected - 5 * 256 * 2) / 2 + 5 * 256 * 2
    # The headers win over a quantization_config, and an explicit weight dtype over both.
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "quantization_config": {"quant_method": "fp8"}}))
    assert row(model_from_file(tmp_path))["weights_bytes"] == expected
    assert estimators(str(tmp_path), weight_dtype="bf16")[0].weights_bytes == 2 * model.total_params()


def test_missing_shards_fall_back_to_config_with_a_warning(tmp_path):
    tiny_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors", "x": "model-00003-of-00003.safetensors"}}))
    with pytest.warns(UserWarning, match="1 of the safetensors shards"):
        model = model_from_file(tmp_path)
    assert model.weights is None


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


def test_plan_serves_the_checkpoint_format_unless_told():
    # gpt-oss-120b's mxfp4 experts (60.7 GiB in all) fit one H100; as bf16 (217 GiB) nothing does.
    from kvplan.plan import Workload, search

    w = Workload(isl=1024, osl=256, ttft_seconds=5.0, tpot_seconds=0.2)
    row = search("gpt-oss-120b", w, gpu="h100-sxm", max_gpus=1, max_batch=4, top=1).rows[0]
    assert row["weight_dtype"] == "mxfp4 experts, bf16 rest" and row["gpus"] == 1
    assert row["weights_format"] == "mxfp4 experts, bf16 rest (quantization_config)"
    with pytest.raises(InputError, match="no candidate fits in memory"):
        search("gpt-oss-120b", w, gpu="h100-sxm", max_gpus=1, max_batch=4, top=1, weight_dtype="bf16")
