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


def test_attention_efficiency_splits_the_compute_roofline():
    # Prefill is compute-bound here, so seconds = linear / (peak x compute_eff) + attention / (peak x attention_eff).
    gpu = replace(GPUS["h100-sxm"], compute_efficiency=0.8, attention_efficiency=0.4)
    est = Estimator(get_preset("llama-3.1-8b"), deployment_for(gpu))
    batch, prompt = 1, 32768
    attention = est.prefill_attention_flops(batch, prompt)
    linear = est.prefill_linear_flops(batch, prompt)
    expected = linear / (989.4e12 * 0.8) + attention / (989.4e12 * 0.4)
    assert est.row(batch, prompt)["prefill_seconds"] == pytest.approx(expected, rel=1e-12)
    # Unset, attention runs at the compute efficiency: the plain roofline (linear + attention) / (peak x 0.8).
    plain = Estimator(get_preset("llama-3.1-8b"), deployment_for(replace(gpu, attention_efficiency=None)))
    assert plain.row(batch, prompt)["prefill_seconds"] == pytest.approx((linear + attention) / (989.4e12 * 0.8), rel=1e-12)


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
    # On a CPU the peaks are the fastest rates measured: the copy benchmark or a decode step (bytes/s), the
    # matmul benchmark or a prefill (FLOP/s); every efficiency is a fraction of them, none above 1.
    measured = profile["measured"]
    decode_rates = [p["bytes"] / p["seconds"] for p in measured["decode_points"]]
    prefill_rates = [(p["linear_flops"] + p["attention_flops"]) / p["seconds"] for p in measured["prefill_points"]]
    assert gpu["bandwidth_bytes_per_s"] == max([measured["copy_bandwidth_bytes_per_s"]] + decode_rates)
    assert gpu["bf16_flops"] == max([measured["matmul_flops"]] + prefill_rates)
    for key in ("compute_efficiency", "bandwidth_efficiency", "attention_efficiency"):
        assert 0 < gpu[key] <= 1
    assert 0 < measured["copy_efficiency"] <= 1 and 0 < measured["matmul_efficiency"] <= 1
    assert all(rate <= gpu["bf16_flops"] for rate in prefill_rates)
    # Each decode point's efficiency is bytes / seconds / peak, as stored.
    for point in measured["decode_points"]:
        assert point["efficiency"] == pytest.approx(point["bytes"] / point["seconds"] / gpu["bandwidth_bytes_per_s"])
        assert 0 < point["efficiency"] <= 1
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


def test_a_rate_above_the_peak_is_refused_not_printed():
    # A prefill of 2e12 FLOPs in 1 ms is 2e15 FLOP/s, above the h100-sxm's 989.4e12 peak: a timing or count error.
    from kvplan.units import MeasurementError

    gpu = GPUS["h100-sxm"]
    prefill = [{"batch": 1, "context": 4096, "seconds": 1e-3, "linear_flops": 1.5e12, "attention_flops": 0.5e12}]
    with pytest.raises(MeasurementError, match="prefill at batch 1, context 4096 ran at 2e\\+15 FLOP/s, 202%"):
        cal._check_below_peaks(gpu, 3e12, 8e14, [], prefill)
    cal._check_below_peaks(gpu, 3e12, 8e14, [], [{**prefill[0], "seconds": 4e-3}])  # 5e14 FLOP/s: fine


def test_calibrate_refuses_a_bad_price_and_an_unwritable_out_before_measuring(run_cli, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("measured although the request was bad")

    monkeypatch.setattr(cal, "copy_bandwidth", never)
    for args, needle in ((["--usd-per-hour", "-1"], "--usd-per-hour must be a positive price"),
                         (["--usd-per-hour", "nan"], "--usd-per-hour must be a positive price"),
                         (["--usd-per-hour", "1", "--out", str(tmp_path)], "is a folder"),
                         (["--usd-per-hour", "1", "--out", str(tmp_path / "no" / "p.json")], "does not exist"),
                         (["--gpu", "h100", "--usd-per-hour", "1"], "--gpu names a GPU preset")):
        code, out, err = run_cli("calibrate", "--device", "cpu", *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (args, err)


def test_calibrate_writes_the_profile_whole(tmp_path, monkeypatch):
    # The profile goes to a temporary file renamed over --out: a failure mid-write leaves the old file.
    from kvplan import files
    from kvplan.profilers import commands

    out = tmp_path / "p.json"
    out.write_text("old")
    monkeypatch.setattr(cal, "calibrate", lambda *args, **kwargs: {"gpu": {"name": "cpu"}})

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", lambda fd: broken(None))
    with pytest.raises(OSError):
        commands.calibrate("cpu", "auto", 1.0, 1, str(out))
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["p.json"]
    monkeypatch.undo()
    monkeypatch.setattr(cal, "calibrate", lambda *args, **kwargs: {"gpu": {"name": "cpu"}})
    commands.calibrate("cpu", "auto", 1.0, 1, str(out))
    assert json.loads(out.read_text()) == {"gpu": {"name": "cpu"}}


def test_the_h100_profile_in_examples_is_below_every_peak():
    # examples/validation-h100-profile.json, measured on an H100: every rate is a fraction of the datasheet's.
    from pathlib import Path

    profile = json.loads((Path(__file__).parents[1] / "examples" / "validation-h100-profile.json").read_text())
    measured = profile["measured"]
    cal._check_below_peaks(GPUS["h100-sxm"], measured["copy_bandwidth_bytes_per_s"], measured["matmul_flops"],
                           measured["decode_points"], measured["prefill_points"])
