"""The `kvplan estimate` command: its --json/--csv contract, bad input, and what it imports."""

import csv
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvplan.estimator import COLUMNS
from kvplan.hardware import GPUS
from kvplan.presets import PRESETS

CONFIGS = Path(__file__).parent / "configs"

CONTRACT = ["model", "attention", "gpu", "gpus", "batch", "context", "kv_dtype", "kv_cache_bytes", "kv_bytes_per_token",
            "weights_bytes", "activation_bytes", "total_bytes", "fits", "prefill_flops", "prefill_attention_flops",
            "decode_flops_per_token", "prefill_seconds", "decode_seconds_per_token", "prefill_usd_per_mtok",
            "decode_usd_per_mtok"]
INTEGERS = ["gpus", "batch", "context"] + [c for c in CONTRACT if c.endswith("_bytes") or c == "kv_bytes_per_token"]
NUMBERS = ["prefill_flops", "prefill_attention_flops", "decode_flops_per_token", "prefill_seconds",
           "decode_seconds_per_token", "prefill_usd_per_mtok", "decode_usd_per_mtok"]


def estimate_json(run_cli, *args):
    code, out, err = run_cli("estimate", *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def test_json_is_a_list_of_flat_objects_with_the_contract_columns(run_cli):
    rows, _ = estimate_json(run_cli, "-m", "llama-3.1-8b", "--context", "128k", "--batch", "8", "--kv-dtype", "fp8")
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert set(CONTRACT) <= set(row)
    assert all(not isinstance(v, (dict, list)) for v in row.values())
    for column in INTEGERS:
        assert type(row[column]) is int, column
    for column in NUMBERS:
        assert isinstance(row[column], (int, float)) and not isinstance(row[column], bool), column
    assert type(row["fits"]) is bool
    assert (row["model"], row["gpu"], row["gpus"], row["batch"], row["context"], row["kv_dtype"]) == \
        ("llama-3.1-8b", "h100-sxm", 1, 8, 131072, "fp8")
    # fp8: 32 layers x 2 x 8 KV heads x 128 x 1 byte per token; 8 sequences of 131072 tokens.
    assert row["kv_cache_bytes"] == 8 * 131072 * 32 * 2 * 8 * 128


def test_one_row_per_context_attention_dtype_and_batch(run_cli):
    rows, _ = estimate_json(run_cli, "-m", "llama-3.1-8b", "-c", "4k,32k,128k", "-b", "1,8",
                            "-a", "mha", "-a", "tpa:k_rank=2,v_rank=2,window:4096", "--kv-dtype", "bf16,int8")
    assert len(rows) == 3 * 2 * 3 * 2  # contexts x batches x attention specs x kv dtypes
    assert {r["context"] for r in rows} == {4096, 32768, 131072}
    assert {r["model"] for r in rows} == {"llama-3.1-8b [mha]", "llama-3.1-8b [tpa:k_rank=2,v_rank=2]",
                                         "llama-3.1-8b [window:4096]"}


def test_csv_has_the_same_columns_and_values_as_json(run_cli):
    args = ("-m", "deepseek-v3.2-exp", "-c", "8k,64k", "--gpus", "8")
    rows, _ = estimate_json(run_cli, *args)
    code, out, err = run_cli("estimate", *args, "--csv")
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == list(rows[0])
    for json_row, csv_row in zip(rows, table):
        assert {k: str(v) for k, v in json_row.items()} == csv_row


def test_default_output_is_a_table_with_units(run_cli, run_json):
    code, out, _ = run_cli("estimate", "-m", "gemma-3-27b", "-c", "32k")
    assert code == 0
    for unit in ("GiB", "ms", "$/Mtok"):
        assert unit in out
    # The table's one row shows the JSON row's figures in those units, and the caption names the deployment.
    (row,) = run_json("estimate", "-m", "gemma-3-27b", "-c", "32k")
    (line,) = [line for line in out.splitlines() if line.startswith("│ gemma-3-27b")]
    cells = [cell.strip() for cell in line.strip("│").split("│")]
    # The default (compact) table: kv, batch and context are the same in every row, so the title states them.
    assert "kvplan estimate: kv bf16, batch 1, context 32k" in out
    assert cells[2:] == [f"{row['kv_cache_bytes'] / 2**30:,.2f}", f"{row['total_bytes_per_gpu'] / 2**30:,.2f}", "yes",
                         f"{row['prefill_seconds']:,.3f}", f"{row['decode_seconds_per_token'] * 1e3:,.2f}",
                         f"{row['prefill_usd_per_mtok']:,.3f}", f"{row['decode_usd_per_mtok']:,.3f}"]
    # --wide: every column, kv, batch and context among them.
    code, out, _ = run_cli("estimate", "-m", "gemma-3-27b", "-c", "32k", "--wide")
    (line,) = [line for line in out.splitlines() if line.startswith("│ gemma-3-27b")]
    cells = [cell.strip() for cell in line.strip("│").split("│")]
    assert cells[2:9] == ["bf16", "1", "32k", f"{row['kv_cache_bytes'] / 2**30:,.2f}",
                          f"{row['weights_bytes'] / 2**30:,.2f}", f"{row['activation_bytes'] / 2**30:,.2f}",
                          f"{row['total_bytes_per_gpu'] / 2**30:,.2f}"]
    # gemma-3-27b's local/global cache at 32k: 52 layers hold 1024 tokens, 10 hold all 32768; 16 KV heads of 128.
    assert row["kv_cache_bytes"] == (52 * 1024 + 10 * 32768) * 2 * 16 * 128 * 2
    assert out.rstrip().splitlines()[-1] == ("h100-sxm x1 (tp 1, pp 1); GiB = 2^30 bytes; roofline per operation (bf16 "
                                             "GEMMs at 79% of 989.4 TFLOP/s, weights streamed at 86% of 3.35 TB/s); "
                                             "$2.99/GPU-hour")


def test_config_json_path_as_model(run_cli):
    rows, _ = estimate_json(run_cli, "-m", str(CONFIGS / "qwen3-8b"), "-c", "8k")
    assert rows[0]["kv_bytes_per_token"] == 36 * 2 * 8 * 128 * 2


def test_context_beyond_max_positions_warns_and_estimates(run_cli):
    rows, err = estimate_json(run_cli, "-m", "llama-3.1-8b", "-c", "1M")
    assert "warning" in err and "131072" in err
    assert err == ("kvplan: warning: llama-3.1-8b: context 1048576 exceeds the model's max_position_embeddings "
                   "(131072); estimated anyway\n")
    assert rows[0]["context"] == 1024 * 1024


def test_heads_that_do_not_split_over_tp_warn_and_estimate(run_cli):
    # 32 heads over 3 GPUs: ceil(8 / 3) = 3 KV heads per GPU, so 9 heads' K and V over the 3 GPUs.
    rows, err = estimate_json(run_cli, "-m", "llama-3.1-8b", "-c", "4k", "--gpus", "3")
    assert "tp=3" in err and "warning" in err
    assert err.startswith("kvplan: warning: llama-3.1-8b: 32 attention heads do not split evenly over tp=3 GPUs")
    assert err.count("\n") == 1
    assert rows[0]["kv_cache_bytes"] == 3 * 32 * 2 * 3 * 128 * 2 * 4096


def test_encoders_warn_that_they_are_costed_causally(run_cli):
    rows, err = estimate_json(run_cli, "-m", "modernbert-base", "-c", "8k")
    assert "is an encoder" in err and rows[0]["context"] == 8192
    assert err.startswith("kvplan: warning: modernbert-base is an encoder") and err.count("\n") == 1
    # Nothing is decoded: every decode column is null.
    decode = [k for k in COLUMNS if k.startswith("decode_")]
    assert len(decode) == 4 + 7 and [rows[0][k] for k in decode] == [None] * len(decode)


def test_hardware_overrides_on_the_command_line_and_from_a_file(run_cli, tmp_path):
    rows, _ = estimate_json(run_cli, "-m", "llama-3.1-8b", "--gpu-set", "memory_bytes=24GiB", "--usd-per-hour", "1.5")
    assert rows[0]["gpu_memory_bytes"] == 24 * 2**30
    profile = tmp_path / "gpu.json"
    profile.write_text(json.dumps({"name": "my-gpu", "memory_bytes": 48 * 10**9, "bandwidth_bytes_per_s": 1e12,
                                   "bf16_flops": 200e12, "fp8_flops": 0, "link_bytes_per_s": 32e9, "usd_per_hour": 1.0}))
    rows, _ = estimate_json(run_cli, "-m", "llama-3.1-8b", "--hardware-profile", str(profile))
    assert (rows[0]["gpu"], rows[0]["gpu_memory_bytes"]) == ("my-gpu", 48 * 10**9)


@pytest.mark.parametrize("args,needle", [
    (["-m", "llama-3.1-8x"], "did you mean llama-3.1-8b"),
    (["-m", "llama-3.1-8b", "--gpu", "h10"], "did you mean h100"),
    (["-m", "llama-3.1-8b", "--gpu", "tpu-v5"], "unknown GPU"),
    (["-m", str(CONFIGS / "broken")], "not valid JSON"),
    (["-m", str(CONFIGS / "nothing-here")], "no such file"),
    (["-m", "llama-3.1-8b", "-c", "0"], "--context must be positive"),
    (["-m", "llama-3.1-8b", "-c", "-4k"], "--context must be a number such as"),
    (["-m", "llama-3.1-8b", "-c", "lots"], "--context must be a number such as"),
    (["-m", "llama-3.1-8b", "-b", "0"], "--batch must be positive"),
    (["-m", "llama-3.1-8b", "-b", "2.5"], "--batch must be a whole number"),
    (["-m", "llama-3.1-8b", "--prompt", "x"], "--prompt must be a number such as"),
    (["-m", "llama-3.1-8b", "--gpus", "0"], "--gpus"),
    (["-m", "llama-3.1-8b", "--gpus", "two"], "--gpus"),
    (["-m", "llama-3.1-8b", "--reserve", "-1GiB"], "reserve must be"),
    (["-m", "llama-3.1-8b", "--kv-dtype", "fp9"], "--kv-dtype 'fp9' is not a storage format (did you mean fp8?)"),
    (["-m", "llama-3.1-8b", "-a", "banana"], "--attention 'banana': unknown kind 'banana'"),
    (["-m", "llama-3.1-8b", "-a", "gqa:kv_heads=5"], "must divide the model's 32 heads"),
    (["-m", "llama-3.1-8b", "-a", "tpa:k_rank=two"], "k_rank must be a number such as"),
    (["-m", "llama-3.1-8b", "-a", "tpa:rank=2"], "unknown option(s) rank"),
    (["-m", "llama-3.1-8b", "-a", "window:0"], "window must be positive"),
    (["-m", "llama-3.1-8b", "--usd-per-hour", "-2"], "usd_per_hour must be a positive"),
    (["-m", "llama-3.1-8b", "--usd-per-hour", "nan"], "usd_per_hour must be a positive finite"),
    (["-m", "llama-3.1-8b", "--gpu-set", "usd_per_hour=inf"], "usd_per_hour must be a positive finite"),
    (["-m", "llama-3.1-8b", "-c", "4k", "--prompt", "8k"], "exceeds --context"),
    (["-m", "llama-3.1-8b", "--json", "--csv"], "not both"),
    (["-m", "llama-3.1-8b", "--kv-dtype", ","], "--kv-dtype names no format"),
    (["-m", "llama-3.1-8b", "--compute-efficiency", "1.5"], "compute_efficiency is a fraction"),
    (["-m", "llama-3.1-8b", "--gpu-set", "colour=red"], "unknown hardware field(s) colour"),
    (["-m", "llama-3.1-8b", "--pp", "64", "--gpus", "64"], "exceeds the model's 32 layers"),
    (["-m", "llama-3.1-8b", "--no-such-option"], "No such option"),
    ([], "Missing option '--model'"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(run_cli, args, needle):
    code, out, err = run_cli("estimate", *args)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("kvplan: error:"), err
    assert needle in err
    assert "Traceback" not in err and out == ""


def test_missing_config_field_is_named(run_cli, tmp_path):
    config = json.loads((CONFIGS / "deepseek-v3" / "config.json").read_text())
    del config["qk_rope_head_dim"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("estimate", "-m", str(tmp_path))
    assert code == 2 and "lacks required field 'qk_rope_head_dim'" in err and err.count("\n") == 1


def test_models_and_gpus_list_presets(run_cli):
    code, out, _ = run_cli("models", "--json")
    models = json.loads(out)
    names = [r["name"] for r in models]
    assert code == 0 and "deepseek-v3.2-exp" in names and "t6-medium" in names
    assert names == list(PRESETS)
    (llama,) = [r for r in models if r["name"] == "llama-3.1-8b"]
    # 32 layers x 2 (K, V) x 8 KV heads x 128 x 2 bytes; 8,030,261,248 parameters as Meta publishes.
    assert (llama["kv_bytes_per_token_bf16"], llama["params"]) == (32 * 2 * 8 * 128 * 2, 8_030_261_248)
    formats = {r["name"]: r["weights_format"] for r in models}
    # The published config.json files: DeepSeek-V3 quantization_config fp8 with weight_block_size [128, 128];
    # gpt-oss mxfp4 with attention, router, embeddings and LM head in modules_to_not_convert; Llama none.
    assert formats["deepseek-v3"] == "fp8 block 128x128 (quantization_config)"
    assert formats["gpt-oss-120b"] == "mxfp4 experts, bf16 rest (quantization_config)"
    assert formats["llama-3.1-8b"] == "bf16 (no quantization_config)"
    for name in ("deepseek-v3", "gpt-oss-120b", "llama-3.1-8b"):  # the text an estimate row carries
        assert json.loads(run_cli("estimate", "-m", name, "--json")[1])[0]["weights_format"] == formats[name]
    assert "fp8 block 128x128" in run_cli("models")[1]
    code, out, _ = run_cli("gpus", "--json")
    gpus = {r["name"] for r in json.loads(out)}
    assert code == 0 and {"h100-sxm", "h100-pcie", "h200", "h800", "a100-40gb", "a100-80gb", "l40s", "b200", "mi300x",
                          "rtx-4090"} <= gpus
    assert [{k: v for k, v in row.items() if k != "aliases"} for row in json.loads(out)] == \
        [{**dataclasses.asdict(gpu), "kernels": gpu.kernels.source} for gpu in GPUS.values()]
    assert {row["name"]: row["aliases"] for row in json.loads(out)}["h100-sxm"] == "h100"


def test_help_states_units(run_cli):
    code, out, _ = run_cli("estimate", "--help")
    assert code == 0
    flat = " ".join(word for word in out.split() if word.strip("│╭╮╰╯─"))  # rich's box drawn around wrapped help
    for phrase in ("Tokens per sequence", "Sequences", "GPU-hour in $", "Fraction of", "tokens (vLLM uses 16)"):
        assert phrase in flat, phrase


def _python(*args, timeout=60):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_python_dash_m_kvplan_works():
    done = _python("-m", "kvplan", "estimate", "-m", "mistral-7b-v0.1", "-c", "32k", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["model"] == "mistral-7b-v0.1"
    bad = _python("-m", "kvplan", "estimate", "-m", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_estimate_imports_neither_torch_nor_pandas():
    code = ("import sys; from kvplan.cli import main; "
            "main(['estimate', '-m', 'llama-3.1-8b', '--context', '128k', '--json']); "
            "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'matplotlib') if m in sys.modules), file=sys.stderr)")
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_python_api_returns_the_same_rows(run_cli):
    import kvplan

    rows, _ = estimate_json(run_cli, "-m", "gemma-3-27b", "-c", "8k,128k", "-b", "2", "-a", "native,mqa")
    frame = kvplan.estimate("gemma-3-27b", context=["8k", "128k"], batch=2, attention=["native", "mqa"])
    assert frame.to_dict("records") == rows
    assert kvplan.estimate("gemma-3-27b", context="8k", batch=2) == rows[0]  # one row: a dict


def test_python_api_rejects_bad_sizes_and_warns_past_max_positions():
    import warnings

    import kvplan

    for bad in (dict(context=0), dict(batch=-1), dict(context="1.5k3"), dict(kv_dtype="int3")):
        with pytest.raises(kvplan.InputError):
            kvplan.estimate("llama-3.1-8b", **bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = kvplan.estimate("mistral-7b-v0.1", context="64k")
    assert row["context"] == 65536 and "max_position_embeddings" in str(caught[0].message)
