"""`kvplan calibrate` and the estimate fields a calibration profile sets (attention efficiency)."""

from dataclasses import replace

import pytest

from kvplan.api import deployment_for
from kvplan.estimator import Estimator
from kvplan.hardware import GPUS
from kvplan.presets import get_preset


def test_decode_reads_only_looked_up_embedding_rows():
    # llama-3.1-8b has an untied input embedding of 128256 x 4096 bf16; a decode step of batch 8 looks up
    # 8 rows, so it reads (128256 - 8) x 4096 x 2 bytes fewer than the whole weights.
    est = Estimator(get_preset("llama-3.1-8b"), deployment_for(GPUS["h100-sxm"]))
    assert est.weights_bytes - est.weights_read_bytes(8) == (128256 - 8) * 4096 * 2
    # A prompt of at least vocab tokens may touch every row.
    assert est.weights_read_bytes(200_000) == est.weights_bytes


def test_tied_embedding_is_read_whole_by_the_lm_head():
    est = Estimator(get_preset("t6-medium-mha"), deployment_for(GPUS["h100-sxm"]))
    assert est.weights_read_bytes(1) == est.weights_bytes


def test_single_efficiencies_replace_every_operations():
    # compute_efficiency 0.8 and attention_efficiency 0.4 (a profile or --compute-efficiency) replace the
    # kernels' compute figures: dense GEMMs at 0.8 of peak, prefill attention at 0.4 whatever the length.
    gpu = replace(GPUS["h100-sxm"], compute_efficiency=0.8, attention_efficiency=0.4)
    est = Estimator(get_preset("llama-3.1-8b"), deployment_for(gpu))
    batch, prompt = 1, 32768
    attention = est.prefill_attention_flops(batch, prompt)
    linear = est.prefill_linear_flops(batch, prompt) - 2 * get_preset("llama-3.1-8b").lm_head_params()
    row = est.row(batch, prompt)
    assert row["prefill_attention_seconds"] == pytest.approx(attention / (989.4e12 * 0.4), rel=1e-12)
    calls = 4 * 32 * 3.2e-6  # the H100 GEMM kernel's time per call stays
    assert row["prefill_gemm_seconds"] == pytest.approx(calls + linear / (989.4e12 * 0.8), rel=1e-12)
    # Unset, attention runs at the compute efficiency.
    plain = Estimator(get_preset("llama-3.1-8b"), deployment_for(replace(gpu, attention_efficiency=None)))
    assert plain.row(batch, prompt)["prefill_attention_seconds"] == pytest.approx(attention / (989.4e12 * 0.8), rel=1e-12)


# --- kvplan calibrate on the CPU ------------------------------------------------------------------------

import json  # noqa: E402

import torch  # noqa: E402

from kvplan.hardware import gpu_from_file  # noqa: E402
from kvplan.profilers import calibrate as cal  # noqa: E402


def test_prefill_fit_recovers_both_efficiencies():
    # peak 1e15 FLOP/s, linear at 0.8 and attention at 0.4 of it:
    # short prompt: L = 1e12, A = 1e11 -> t = 1e12 / 8e14 + 1e11 / 4e14 = 1.25e-3 + 0.25e-3 = 1.5e-3 s
    # long prompt:  L = 1e12, A = 1e12 -> t = 1.25e-3 + 2.5e-3 = 3.75e-3 s
    points = [{"linear_flops": 1e12, "attention_flops": 1e11, "seconds": 1.5e-3},
              {"linear_flops": 1e12, "attention_flops": 1e12, "seconds": 3.75e-3}]
    linear, attention, how = cal._solve_prefill(points, 1e15, fallback_linear=0.5)
    assert linear == pytest.approx(0.8) and attention == pytest.approx(0.4) and how.startswith("solved")


def test_prefill_fit_falls_back_when_noise_gives_no_fractions():
    # A long prompt faster than the short one has no solution in (0, 1]: linear takes the matmul efficiency
    # (0.5: 1e12 / 5e14 = 2e-3 s) and attention what is left of the long prompt: 1e12 / (1e15 x (3e-3 - 2e-3)) = 1.
    points = [{"linear_flops": 1e12, "attention_flops": 1e11, "seconds": 4e-3},
              {"linear_flops": 1e12, "attention_flops": 1e12, "seconds": 3e-3}]
    linear, attention, how = cal._solve_prefill(points, 1e15, fallback_linear=0.5)
    assert (linear, attention) == (0.5, pytest.approx(1.0)) and "matmul" in how


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                                "intermediate_size": 128, "vocab_size": 256, "tie_word_embeddings": False}))
    return str(path)


def test_cpu_profile_is_accepted_by_estimate(tiny, tmp_path, run_json):
    ref = cal.Reference(tiny, None, 1, ((1, 32), (1, 128)), ((1, 32), (2, 128)), copy_bytes=8 * 2**20, matmul_n=128)
    profile = cal.calibrate(torch.device("cpu"), usd_per_hour=0.5, repeats=2, reference=ref)
    gpu = profile["gpu"]
    assert gpu["name"] == "cpu" and gpu["usd_per_hour"] == 0.5
    # On a CPU the peaks are the measured copy and matmul rates; efficiencies are fractions of them.
    assert gpu["bandwidth_bytes_per_s"] == profile["measured"]["copy_bandwidth_bytes_per_s"]
    assert gpu["bf16_flops"] == profile["measured"]["matmul_flops"]
    for key in ("compute_efficiency", "bandwidth_efficiency", "attention_efficiency"):
        assert 0 < gpu[key] <= 1
    # Each decode point's efficiency is bytes / seconds / peak, as stored.
    for point in profile["measured"]["decode_points"]:
        assert point["efficiency"] == pytest.approx(point["bytes"] / point["seconds"] / gpu["bandwidth_bytes_per_s"])
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(profile))
    loaded = gpu_from_file(path)
    assert loaded.attention_efficiency == gpu["attention_efficiency"]
    (row,) = run_json("estimate", "-m", tiny, "-c", "128", "--hardware-profile", str(path))
    assert row["gpu"] == "cpu"


def test_calibrate_cli_on_cpu_writes_a_profile(tmp_path, run_cli):
    path = tmp_path / "profile.json"
    code, out, _ = run_cli("calibrate", "--device", "cpu", "--usd-per-hour", "0.1", "--repeats", "1", "--out", str(path))
    assert code == 0
    assert "kvplan calibrate" in out and str(path) in out.replace("\n", "")
    profile = json.loads(path.read_text())
    assert profile["kvplan_profile"] == cal.PROFILE_FORMAT and profile["gpu"]["name"] == "cpu"


def test_calibrate_on_cpu_needs_a_price(run_cli):
    code, _, err = run_cli("calibrate", "--device", "cpu", "--repeats", "1")
    assert code == 2 and "--usd-per-hour" in err
