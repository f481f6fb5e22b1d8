"""Expert parallelism and data-parallel attention (kvplan.profilers.distributed) on the CPU: 2 processes, gloo,
float64.

EP: one MoE layer with its routed experts spread whole over 2 ranks gives the unsharded layer's output; each
rank holds the weights counted here by hand, which the most loaded rank's equal Estimator.weights_bytes_per_gpu;
the bytes dispatched and combined are each token's top-k copies, and the communication estimates are
kvplan.parallel's formulas at the H100's all-to-all figures worked by hand (also for the committed H100 rows,
examples/ep2-h100.csv, derived again with no GPU). DP: each rank runs its own sequences through whole attention layers,
its outputs equal the unsharded layers' rows, its cache bytes equal Estimator.kv_cache_bytes_per_gpu at dp.
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from kvplan.kinds import DenseAttention
from kvplan.model import FeedForward, Model
from kvplan.units import InputError

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

from kvplan.profilers import distributed as dist_mod  # noqa: E402

F64 = 8  # bytes per float64 element
D, K, EXPERT, SHARED = 16, 2, 8, 24  # d_model, experts per token, expert width, shared experts' width
LINK = 450e9  # h100-sxm's GPU link, bytes/s one way
# The Estimator's all-to-all: NCCL's on 2 H100s (examples/ep2-h100.csv), 0.642 of the link and 53.2 us per call.
A2A_FRACTION, A2A_SECONDS = 0.642, 53.2e-6


def moe(n_experts: int) -> Model:
    ffn = FeedForward(48, n_experts=n_experts, n_active_experts=K, n_shared_experts=1, moe_intermediate=EXPERT,
                      n_dense_layers=0, shared_intermediate=SHARED)
    return Model(name=f"moe{n_experts}", n_layers=3, d_model=D, vocab_size=61, attention=DenseAttention(4, 2, 4),
                 ffn=ffn)


DENSE = Model(name="dense", n_layers=2, d_model=48, vocab_size=61, attention=DenseAttention(4, 2, 12),
              ffn=FeedForward(72))
EP_JOBS = {"6 experts, 10 tokens": (6, 10), "5 experts, 10 tokens": (5, 10), "6 experts, 3 tokens": (6, 3)}
DP_BATCH, DP_CONTEXT = 4, 12


@pytest.fixture(scope="module")
def rows():
    """Every EP and DP job in one 2-process gloo group (one start-up for the file)."""
    jobs = [dist_mod.ExpertJob(dist_mod.moe_model(moe(e)), t, torch.float64) for e, t in EP_JOBS.values()]
    jobs.append(dist_mod.Job(DENSE, DP_BATCH, DP_CONTEXT, torch.float64, None, 3, parallel="dp"))
    found = dist_mod.spawn_cpu(jobs, nproc=2)
    assert len(found) == 2 * len(jobs)
    names = [*EP_JOBS, "dp"]
    return {name: found[2 * i:2 * i + 2] for i, name in enumerate(names)}


@pytest.mark.parametrize("name", EP_JOBS)
def test_expert_parallel_output_equals_the_unsharded_moe(rows, name):
    for row in rows[name]:
        assert row["parallel"] == "ep" and row["ep"] == 2 and row["backend"] == "gloo"
        assert row["output_error"] < 1e-12 and row["output_matches"]


@pytest.mark.parametrize("name", EP_JOBS)
def test_expert_weights_per_rank(rows, name):
    """Each rank: its routed experts (3 x d x width each), the shared experts (3 x d x 24) and the router
    (experts x d), whole. The estimate is the most loaded rank's: ceil(experts / 2) experts."""
    n_experts, _ = EP_JOBS[name]
    held = [(n_experts + 1) // 2, n_experts // 2]  # rank 0 takes ceil(E/2), rank 1 the rest
    for row, experts in zip(rows[name], held):
        by_hand = (experts * 3 * D * EXPERT + 3 * D * SHARED + n_experts * D) * F64
        assert row["rank_experts"] == experts and row["weights_bytes"] == by_hand
        assert row["weights_bytes_estimate"] == (held[0] * 3 * D * EXPERT + 3 * D * SHARED + n_experts * D) * F64
    assert rows[name][0]["weights_error"] == 0


@pytest.mark.parametrize("name", EP_JOBS)
def test_dispatch_and_combine_bytes(rows, name):
    """A rank dispatches K copies of each of its tokens (d float64 each) and combines back what it received:
    what all ranks dispatch, they combine, and what a rank keeps for itself is not remote."""
    _, tokens = EP_JOBS[name]
    first, second = rows[name]
    assert [r["rank_tokens"] for r in rows[name]] == [(tokens + 1) // 2, tokens // 2]
    for row in rows[name]:
        assert row["dispatch_bytes"] == row["rank_tokens"] * K * D * F64
    assert first["dispatch_bytes"] + second["dispatch_bytes"] == first["combine_bytes"] + second["combine_bytes"]
    # rank 0's remote dispatch is what rank 1 receives from it, and so what rank 1 combines back to it
    assert first["dispatch_bytes_remote"] == second["combine_bytes_remote"]
    assert second["dispatch_bytes_remote"] == first["combine_bytes_remote"]


@pytest.mark.parametrize("name", EP_JOBS)
def test_communication_estimates_by_hand(rows, name):
    """On the CPU nothing is timed; the estimates are h100-sxm's: each all-to-all sends half its bytes over the
    link (the other half stays on the rank) at the GPU's all-to-all figures. The Estimator's own figure sends the
    most loaded rank's K copies per token as fp8 with a 4-byte scale per 128 elements, and combines them in
    bf16."""
    _, tokens = EP_JOBS[name]
    for row in rows[name]:
        assert row["all_to_all_seconds"] is None and row["dispatch_seconds"] is None
        by_hand = sum(size / 2 / (LINK * A2A_FRACTION) + A2A_SECONDS
                      for size in (row["dispatch_bytes"], row["combine_bytes"]))
        assert row["all_to_all_seconds_estimate"] == pytest.approx(by_hand, rel=1e-12)
        copies = (tokens + 1) // 2 * K * D
        assert row["estimator_seconds"] == pytest.approx(
            copies * (1 + 4 / 128) / 2 / (LINK * A2A_FRACTION) + A2A_SECONDS + copies * 2 / 2 / (LINK * A2A_FRACTION)
            + A2A_SECONDS, rel=1e-12)


def test_reestimate_derives_the_committed_h100_rows_again(tmp_path, capsys):
    """examples/ep2-h100.csv (DeepSeek-V3's MoE layer on 2 H100s, bf16): --reestimate rewrites only the estimate
    columns, each worked by hand from the row's measured bytes (the most loaded rank: 2048 of 4096 tokens)."""
    import csv
    from pathlib import Path

    committed = Path(__file__).parents[1] / "examples" / "ep2-h100.csv"
    copy = tmp_path / "ep2.csv"
    copy.write_text(committed.read_text())
    assert dist_mod.main(["--reestimate", str(copy), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    before, after = (list(csv.DictReader(path.open())) for path in (committed, copy))
    assert len(printed) == len(after) == len(before) == 4 and list(after[0]) == list(before[0])
    estimates = {"all_to_all_seconds_estimate", "all_to_all_error", "estimator_seconds", "weights_bytes_estimate",
                 "weights_error", "estimate_gpu"}
    for old, new, row in zip(before, after, printed):
        assert {k: v for k, v in old.items() if k not in estimates} == {k: v for k, v in new.items() if k not in estimates}
        by_hand = sum(int(old[k]) / 2 / (LINK * A2A_FRACTION) + A2A_SECONDS for k in ("dispatch_bytes", "combine_bytes"))
        assert float(new["all_to_all_seconds_estimate"]) == pytest.approx(by_hand, rel=1e-12)
        assert float(new["all_to_all_error"]) == pytest.approx(by_hand / float(old["all_to_all_seconds"]) - 1)
        copies = int(old["tokens"]) // 2 * 8 * 7168  # top-8 copies of the rank's tokens, d_model 7168
        assert float(new["estimator_seconds"]) == pytest.approx(
            copies * (1 + 4 / 128 + 2) / 2 / (LINK * A2A_FRACTION) + 2 * A2A_SECONDS, rel=1e-12)
        # 128 experts of 3 x 7168 x 2048, the shared expert (3 x 7168 x 2048) and the router (256 x 7168), bf16
        assert int(new["weights_bytes_estimate"]) == (129 * 3 * 7168 * 2048 + 256 * 7168) * 2
        assert row["all_to_all_seconds_estimate"] == pytest.approx(float(new["all_to_all_seconds_estimate"]))
    # the committed file is current: deriving it again changes nothing
    assert copy.read_text() == committed.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--reestimate", "no-such-file.csv"], "is not a file"),
    (["--device", "cpu"], "--model is required"),
])
def test_reestimate_bad_input_is_one_line(tmp_path, capsys, argv, message):
    code = dist_mod.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_reestimate_takes_only_expert_parallel_rows(tmp_path, capsys):
    path = tmp_path / "dp.json"
    path.write_text(json.dumps([{"parallel": "dp", "model": "llama-3.1-8b"}]))
    assert dist_mod.main(["--reestimate", str(path)]) == 2
    assert "no expert-parallel rows" in capsys.readouterr().err


def test_data_parallel_attention(rows):
    """Each rank: 2 of the 4 sequences through whole layers. Cache: K and V of 2 KV heads x 12 = 48 elements
    per token per layer, 2 layers x 12 tokens x 2 sequences; weights: the whole layer, (4 + 2 + 2) heads x 12 x
    48 for wqkv and 48 x 48 for wo, per layer (the estimate adds 2 norms per layer and the final norm)."""
    cache = 48 * F64 * 2 * 12 * 2
    weights = 2 * (8 * 12 * 48 + 4 * 12 * 48) * F64
    for row in rows["dp"]:
        assert (row["parallel"], row["tp"], row["dp"], row["rank_batch"]) == ("dp", 1, 2, 2)
        assert row["output_error"] < 1e-12 and row["output_matches"]
        assert row["cache_bytes"] == row["cache_bytes_estimate"] == cache and row["cache_matches"]
        assert row["weights_bytes"] == weights
        assert row["weights_bytes_estimate"] == weights + (2 * 2 * 48 + 48) * F64


def test_rank_shares():
    assert [dist_mod.rank_sequences(5, 2, r) for r in (0, 1)] == [(0, 3), (3, 5)]
    assert [dist_mod.rank_sequences(8, 3, r) for r in (0, 1, 2)] == [(0, 3), (3, 6), (6, 8)]
    assert [list(dist_mod.expert_range(5, 2, r)) for r in (0, 1)] == [[0, 1, 2], [3, 4]]
    assert [list(dist_mod.expert_range(256, 2, r))[::127] for r in (0, 1)] == [[0, 127], [128, 255]]
    with pytest.raises(InputError, match="without one"):
        dist_mod.rank_sequences(1, 2, 0)


def test_moe_state_draws_each_expert_alike_whoever_draws_it():
    ffn = moe(6).ffn
    some = dist_mod.moe_state(ffn, D, range(3, 5), torch.float64, "cpu", seed=7)
    every = dist_mod.moe_state(ffn, D, range(6), torch.float64, "cpu", seed=7)
    assert set(some) < set(every)
    for name, value in some.items():
        assert torch.equal(value, every[name])
    assert not torch.equal(every["experts.3.w_up.weight"], every["experts.4.w_up.weight"])


def _qwen_moe_config(tmp_path):
    config = {"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 48,
              "moe_intermediate_size": 8, "shared_expert_intermediate_size": 24, "num_experts": 6,
              "num_experts_per_tok": 2, "vocab_size": 101, "max_position_embeddings": 256}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_kvplan_profile_ep_runs_under_torchrun(tmp_path):
    """`kvplan profile --gpus 2 --ep 2`: torchrun, each --batch value one forward's tokens."""
    done = subprocess.run([sys.executable, "-m", "kvplan", "profile", "--model", _qwen_moe_config(tmp_path),
                           "--batch", "4,9", "--device", "cpu", "--gpus", "2", "--ep", "2", "--json"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [(r["tokens"], r["rank"]) for r in found] == [(4, 0), (4, 1), (9, 0), (9, 1)]
    # 3 of 6 experts each (3 x 32 x 8), the shared expert (3 x 32 x 24) and the router (6 x 32), float64
    assert all(r["output_matches"] and r["weights_bytes"] == (3 * 3 * 32 * 8 + 3 * 32 * 24 + 6 * 32) * F64
               for r in found)


@pytest.mark.parametrize("argv, message", [
    (["--parallel", "ep", "--model", "llama-3.1-8b"], "no routed experts"),
    (["--parallel", "ep", "--attention", "mqa"], "no --attention"),
    (["--parallel", "dp", "--tokens", "8"], "--tokens is for --parallel ep"),
    (["--parallel", "ep", "--gpu", "h1000"], "unknown GPU"),
])
def test_bad_input_is_one_line_before_any_process_group(tmp_path, capsys, argv, message):
    code = dist_mod.main(["--model", _qwen_moe_config(tmp_path), "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("gpus, dp, ep, message", [
    (2, 2, 2, "not both"), (4, 2, 1, "give --gpus 2"), (1, 1, 2, "give --gpus 2"),
])
def test_profile_layout_checks(gpus, dp, ep, message):
    from kvplan.profilers.commands import distributed_layout

    with pytest.raises(InputError, match=message):
        distributed_layout(gpus, dp, ep)
    assert distributed_layout(2, 2, 1) == "dp" and distributed_layout(2, 1, 2) == "ep"
    assert distributed_layout(2, 1, 1) == "tp"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_nccl_two_gpus(tmp_path):
    """EP and DP on 2 GPUs through NCCL: outputs within bf16 rounding, the all-to-alls timed."""
    found = dist_mod.launch(2, ["--model", _qwen_moe_config(tmp_path), "--parallel", "ep", "--tokens", "64",
                                "--device", "cuda"], timeout=300)
    assert all(r["output_matches"] and r["all_to_all_seconds"] > 0 for r in found)
    found = dist_mod.launch(2, ["--model", _qwen_moe_config(tmp_path), "--parallel", "dp", "--batch", "4",
                                "--context", "64", "--device", "cuda"], timeout=300)
    assert all(r["output_matches"] and r["cache_matches"] for r in found)
