"""Tensor-parallel attention layers (kvplan.profilers.distributed) on the CPU: 2 processes, gloo.

Per kind at tp=2: the all-reduced output of the shards equals the unsharded layers' output (float64), and
each rank's real cache bytes equal Estimator.kv_cache_bytes_per_gpu and the hand count written out here.
The slicing itself is also checked in one process (the shards' partial outputs sum to the full output; a
wrong slice does not), and torchrun runs the command line once end to end.
"""

import json
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from kvplan.kinds import DSA, MLA, TPA, DenseAttention, Mamba
from kvplan.model import FeedForward, Model
from kvplan.units import InputError

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

from kvplan.profilers import distributed as tp_mod  # noqa: E402
from model_helpers import shard_outputs  # noqa: E402

D, BATCH, CONTEXT, STEPS, F64 = 48, 2, 12, 3, 8  # F64: bytes per cached element (float64 cache)
_MLA = MLA(n_heads=4, kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10, q_lora_rank=20)


def tiny(attention, windows=(), layers=2) -> Model:
    return Model(name="tiny", n_layers=layers, d_model=D, vocab_size=61, attention=attention, ffn=FeedForward(72),
                 layer_windows=windows)


# Per kind: the model, and the cache bytes one of 2 ranks holds, counted by hand
# (elements per token per layer x 8 bytes x batch 2 x tokens held, summed over the 2 layers).
KINDS = {
    # 2 KV heads split 1 per rank: K and V of 12 each = 24 elements; 2 layers x 12 tokens.
    "gqa": (tiny(DenseAttention(4, 2, 12, qkv_bias=True)), 24 * F64 * BATCH * (12 + 12)),
    # 1 KV head, replicated on both ranks: still 24 elements per rank, as many as unsharded.
    "mqa": (tiny(DenseAttention(4, 1, 12)), 24 * F64 * BATCH * (12 + 12)),
    # latent 24 + rope key 8 = 32 elements, replicated.
    "mla": (tiny(_MLA), 32 * F64 * BATCH * (12 + 12)),
    "mla-no-q-lora": (tiny(replace(_MLA, q_lora_rank=0)), 32 * F64 * BATCH * (12 + 12)),
    # A_K, A_V: (k 2 + v 1) ranks x 2 of 4 heads = 6; B_K, B_V: 3 ranks x head_dim 8 = 24 (replicated): 30.
    "tpa": (tiny(TPA(n_heads=4, head_dim=8, q_rank=3, k_rank=2, v_rank=1)), 30 * F64 * BATCH * (12 + 12)),
    # 32 latent elements x 8 bytes + indexer key (12 fp8 bytes + one 4-byte fp32 scale) = 272 bytes per token;
    # layer 0 keeps a window of 7 tokens, layer 1 all 12.
    "dsa": (tiny(DSA(_MLA, index_n_heads=16, index_head_dim=12, index_topk=5), windows=(7, None)),
            (32 * F64 + 12 + 4) * BATCH * (7 + 12)),
    # GQA with a window of 5 on layer 0: 24 elements x (5 + 12) tokens.
    "gqa-window": (tiny(DenseAttention(4, 2, 12), windows=(5, None)), 24 * F64 * BATCH * (5 + 12)),
    # A Mamba-1 layer, then GQA: 8 of 16 channels per rank, each with a state of 4 and the last 3 inputs of x
    # (fixed per sequence), and the GQA layer's 24 elements x 12 tokens. The ranks all-reduce x_proj inside
    # the Mamba layer.
    "mamba-hybrid": (replace(tiny(DenseAttention(4, 2, 12)), recurrent=Mamba(d_inner=16, state_size=4, dt_rank=3, chunk=4),
                             layer_mixers=("recurrent", "attention")),
                     8 * (4 + 3) * F64 * BATCH + 24 * F64 * BATCH * 12),
}


@pytest.fixture(scope="module")
def rows():
    """All kinds in one 2-process gloo group (one start-up for the whole file)."""
    jobs = [tp_mod.Job(desc, BATCH, CONTEXT, torch.float64, None, STEPS, seed=0) for desc, _ in KINDS.values()]
    found = tp_mod.spawn_cpu(jobs, nproc=2)
    assert len(found) == 2 * len(jobs)
    return {name: found[2 * i:2 * i + 2] for i, name in enumerate(KINDS)}


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_output_equals_unsharded(rows, kind):
    for row in rows[kind]:
        assert row["tp"] == 2 and row["backend"] == "gloo"
        assert row["output_error"] < 1e-9, row["output_error"]
        assert row["output_matches"]


@pytest.mark.parametrize("kind", KINDS)
def test_cache_bytes_per_rank_equal_the_estimate(rows, kind):
    _, by_hand = KINDS[kind]
    assert [r["rank"] for r in rows[kind]] == [0, 1]
    for row in rows[kind]:
        assert row["cache_bytes"] == by_hand
        assert row["cache_bytes_estimate"] == by_hand
        assert row["cache_matches"]
        assert row["peak_bytes"] is None and row["transient_bytes"] is None  # no GPU: no peak memory


def test_weights_per_rank_show_what_tp_replicates(rows):
    """GQA splits every attention weight in two, so a rank holds half; MLA keeps its latent projection and
    norms whole, so a rank holds more than half; the estimate counts both as the ranks hold them."""
    # GQA: wqkv (4 + 2 + 2) heads x 12 x 48 (+ bias 96) and wo 48 x 48, per layer, halved, x 2 layers, x 8 bytes.
    full_layer = 8 * 12 * D + 8 * 12 + 4 * 12 * D
    gqa = rows["gqa"][0]
    assert gqa["weights_bytes"] == 2 * (full_layer // 2) * F64
    # MLA (d 48, 4 heads, latent 24, rope 8, nope 12, v 10, q_lora 20), per layer on one rank:
    # whole: wq_a 48 x 20 + q_norm 20 + wkv_a 48 x (24 + 8) + kv_norm 24 = 960 + 20 + 1536 + 24 = 2540;
    # halved: wq_b 20 x 4 x (12 + 8) / 2 = 800, wkv_b 24 x 4 x (12 + 10) / 2 = 1056, wo 4 x 10 x 48 / 2 = 960.
    mla = rows["mla"][0]
    assert mla["weights_bytes"] == 2 * (2540 + 800 + 1056 + 960) * F64
    # The estimate splits the same way (attention.params(d, tp)); it also counts each layer's two RMSNorms and
    # the final norm (2 x 2 x 48 + 48 weights), which this attention-only harness does not build.
    norms = 2 * 2 * D + D
    assert mla["weights_bytes"] + norms * F64 == mla["weights_bytes_estimate"]
    assert gqa["weights_bytes"] + norms * F64 == gqa["weights_bytes_estimate"]


@pytest.mark.parametrize("kind", KINDS)
def test_slices_sum_to_the_full_layer_in_one_process(kind):
    desc, _ = KINDS[kind]
    desc = tiny(desc.attention, layers=1)
    [(total, full)] = shard_outputs(desc, 2, ranks=(0, 1))
    torch.testing.assert_close(total, full, rtol=1e-10, atol=1e-10)
    [(wrong, _)] = shard_outputs(desc, 2, ranks=(0, 0))  # rank 0's slice twice: half the heads counted twice
    assert (wrong - full).abs().max() > 1e-3


def test_shard_specs():
    assert tp_mod.shard_spec(DenseAttention(8, 4, 16), 2) == DenseAttention(4, 2, 16)
    assert tp_mod.shard_spec(DenseAttention(8, 1, 16), 4) == DenseAttention(2, 1, 16)  # MQA: head replicated
    assert tp_mod.shard_spec(DenseAttention(8, 2, 16), 4) == DenseAttention(2, 1, 16)  # 2 KV heads, 4 GPUs
    assert tp_mod.shard_spec(_MLA, 2) == replace(_MLA, n_heads=2)
    dsa = DSA(_MLA, index_n_heads=16, index_head_dim=12, index_topk=5)
    assert tp_mod.shard_spec(dsa, 4) == replace(dsa, mla=replace(_MLA, n_heads=1))  # indexer heads kept whole
    with pytest.raises(InputError, match="do not split"):
        tp_mod.shard_spec(DenseAttention(6, 6, 8), 4)
    with pytest.raises(InputError, match="KV heads"):
        tp_mod.shard_spec(DenseAttention(6, 3, 8), 2)


def _tiny_config(tmp_path):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3, "intermediate_size": 96,
              "vocab_size": 101, "max_position_embeddings": 256, "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_torchrun_command_line(tmp_path):
    """torchrun --nproc_per_node 2 -m kvplan.profilers.distributed on a config.json, with re-casts."""
    found = tp_mod.launch(2, ["--model", _tiny_config(tmp_path), "--attention", "gqa:kv_heads=2,mqa", "--context", "16",
                              "--batch", "1,2", "--layers", "2", "--device", "cpu"], timeout=120)
    assert len(found) == 2 * 2 * 2  # 2 attentions x 2 batches x 2 ranks
    for row in found:
        assert row["layers"] == 2 and row["full_layers"] == 3 and row["dtype"] == "float64"
        assert row["output_matches"] and row["cache_matches"]
        # K and V of one KV head (16 = 64 / 4 heads) per rank in either case: 2 x 16 x 8 bytes x 16 tokens x 2 layers.
        assert row["cache_bytes"] == row["batch"] * 2 * 16 * F64 * 16 * 2


def test_kvplan_profile_gpus_runs_the_sharded_path(tmp_path):
    """`kvplan profile --gpus 2` launches the same torchrun path and writes its rows (JSON and --out CSV)."""
    import csv
    import subprocess
    import sys

    out = tmp_path / "tp.csv"
    done = subprocess.run([sys.executable, "-m", "kvplan", "profile", "--model", _tiny_config(tmp_path), "--context", "16",
                           "--batch", "1", "--layers", "1", "--device", "cpu", "--gpus", "2", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["rank"] for r in rows] == [0, 1]
    assert all(r["cache_matches"] and r["output_matches"] for r in rows)
    assert len(list(csv.DictReader(out.open()))) == 2


@pytest.mark.parametrize("argv, message", [
    (["--kv-dtype", "int3"], "kv dtype"),
    (["--attention", "gqa:kv_heads=3"], "kv_heads=3"),
    (["--layers", "9"], "9 of its 3 layers"),
])
def test_bad_input_is_one_line_before_any_process_group(tmp_path, capsys, argv, message):
    code = tp_mod.main(["--model", _tiny_config(tmp_path), "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_nccl_two_gpus(tmp_path):
    """The same run on 2 GPUs through NCCL: exact cache bytes, outputs within bf16 rounding, a measured peak
    at least the resident weights and cache."""
    found = tp_mod.launch(2, ["--model", _tiny_config(tmp_path), "--attention", "gqa:kv_heads=2,mqa,mla,tpa,dsa",
                              "--context", "64", "--batch", "2", "--device", "cuda"], timeout=300)
    assert len(found) == 5 * 2
    for row in found:
        assert row["backend"] == "nccl" and row["cache_matches"] and row["output_matches"]
        assert row["peak_bytes"] >= row["weights_bytes"] + row["cache_bytes"]
