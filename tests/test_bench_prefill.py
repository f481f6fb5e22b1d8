"""kvplan.profilers.bench_prefill: which layers each case runs, and a CPU run of the script on a small
DeepSeek-V3.2-style config (the GPU run is examples/bench/bench_prefill-h100-*.csv)."""

import json

import pytest
import torch

from kvplan.api import resolve_model
from kvplan.estimator import Estimator
from kvplan.hardware import get_gpu
from kvplan.kinds import DSA, MLA
from kvplan.models.transformer import Transformer
from kvplan.presets import get_preset
from kvplan.profilers import bench_prefill
from kvplan.profilers.store import read_rows
from kvplan.profilers.sweep import deployment

from test_checkpoints import CONFIGS

INDEXER = ("index_wq", "index_wk", "index_k_norm", "index_weights")


def _shapes(desc) -> dict:
    """Parameter and buffer shapes of the torch model, built on the meta device (no memory)."""
    net = Transformer(desc, 1, 16, torch.bfloat16, device="meta", dtype=torch.bfloat16)
    return {name: tuple(t.shape) for name, t in [*net.named_parameters(), *net.named_buffers()]}


def test_deepseek_dsa_case_is_the_model_and_mla_the_same_layers_without_the_indexer():
    base = get_preset("deepseek-v3.2-exp")
    dsa, mla = (bench_prefill.case_model(base, case, 2) for case in ("dsa", "mla"))
    assert dsa.attention == base.attention and isinstance(dsa.attention, DSA)
    assert mla.attention == base.attention.mla and isinstance(mla.attention, MLA)
    assert (mla.attention.n_heads, mla.attention.kv_lora_rank, mla.attention.qk_rope_head_dim) == (128, 512, 64)
    assert dsa.n_layers == mla.n_layers == 2
    assert not any(dsa.ffn.is_moe_layer(i) for i in range(2))  # first_k_dense_replace = 3: dense feed-forwards
    dsa_shapes, mla_shapes = _shapes(dsa), _shapes(mla)
    indexer = {name for name in dsa_shapes if any(part in name for part in INDEXER) or "index_" in name}
    assert indexer and {name for name in dsa_shapes if name not in indexer} == set(mla_shapes)
    assert all(dsa_shapes[name] == shape for name, shape in mla_shapes.items())


def test_llama_cases_are_the_recasts_validate_runs():
    base = get_preset("llama-3.1-8b")
    assert bench_prefill.case_model(base, "gqa", 2).attention == base.attention  # llama's own GQA
    assert bench_prefill.case_model(base, "dsa", 2).attention.n_heads == 32
    assert bench_prefill.case_model(base, "window", 2).layer_windows == (4096, 4096)


def _tiny_deepseek(tmp_path):
    config = json.loads((CONFIGS / "deepseek-v3.2-exp" / "config.json").read_text())
    config.pop("quantization_config")
    config.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=24,
                  qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, intermediate_size=96,
                  moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                  num_hidden_layers=4, vocab_size=256, index_n_heads=4, index_head_dim=16, index_topk=8)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_cpu_run_writes_each_case_with_its_estimate(tmp_path):
    config = _tiny_deepseek(tmp_path)
    out = tmp_path / "out"
    rows = bench_prefill.main(["--device", "cpu", "--model", str(config), "--layers", "2", "--cases", "dsa,mla",
                               "--contexts", "24,40", "--torch-max", "0", "--repeats", "1", "--out", str(out)])
    written = read_rows(out / "bench_prefill.csv")
    assert [(r["context"], r["case"]) for r in written] == [(24, "dsa"), (24, "mla"), (40, "dsa"), (40, "mla")]
    base = resolve_model(str(config))
    dep = deployment(get_gpu("h100-sxm"), "bf16", torch.float32)
    for row in written:
        assert row["model"] == str(config) and row["layers"] == 2 and row["status"] == "ok"
        assert "torch_seconds" not in row  # --torch-max 0: no PyTorch-path run
        desc = bench_prefill.case_model(base, row["case"], 2)
        assert row["attention"] == desc.attention.label
        estimate = Estimator(desc, dep).row(1, row["context"])["prefill_seconds"]
        assert row["kernels_seconds_estimate"] == pytest.approx(estimate)
        assert row["kernels_error"] == pytest.approx(estimate / row["kernels_seconds"] - 1)
    assert len(rows) == 4


@pytest.mark.parametrize("flag, value, message", [("--cases", "dsa,nope", "unknown case 'nope'"),
                                                  ("--torch-max", "-1", "--torch-max"),
                                                  ("--model", "no-such-model", "no-such-model"),
                                                  ("--layers", "0", "--layers")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as stop:
        bench_prefill.main(["--device", "cpu", "--out", str(tmp_path), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
