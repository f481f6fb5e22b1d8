"""`kvplan calibrate` and the estimate fields a calibration profile sets (attention efficiency)."""

import dataclasses
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
    calls = 4 * 4 * 32 * 3.2e-6  # 4 forwards of 8192 tokens; the H100 GEMM kernel's time per call stays
    assert row["prefill_gemm_seconds"] == pytest.approx(calls + linear / (989.4e12 * 0.8), rel=1e-12)
    # Unset, attention runs at the compute efficiency.
    plain = Estimator(get_preset("llama-3.1-8b"), deployment_for(replace(gpu, attention_efficiency=None)))
    assert plain.row(batch, prompt)["prefill_attention_seconds"] == pytest.approx(attention / (989.4e12 * 0.8), rel=1e-12)


# --- kvplan calibrate on the CPU ------------------------------------------------------------------------

import json  # noqa: E402

import torch  # noqa: E402

from kvplan.hardware import gpu_from_file  # noqa: E402
from kvplan.profilers import calibrate as cal  # noqa: E402


def test_calibration_recovers_known_kernels_from_synthetic_timings():
    # Timings made from known figures on a GPU of 1e15 FLOP/s and 2e12 B/s: GEMM compute 0.75, bandwidth 0.8,
    # 4 us a call; prefill attention e(L) = 0.6 L / (L + 2000); decode attention 0.9 + 10 us; copies 0.85 + 2 us.
    peak, hbm = 1e15, 2e12
    gemm = [{"m": m, "n": n, "k": k, "bytes_per_element": 2,
             "seconds": 4e-6 + max(2 * m * n * k / (peak * 0.75), n * k * 2 / (hbm * 0.8))}
            for n, k in ((4096, 4096), (8192, 8192), (4096, 14336)) for m in (1, 8, 4096)]
    attention = [{"tokens": n, "flops": 4 * 32 * 128 * n * (n + 1) // 2,
                  "seconds": 4 * 32 * 128 * n * (n + 1) // 2 / (peak * 0.6 * n / (n + 2000))} for n in (1024, 4096, 16384)]
    decode = [{"bytes": b, "seconds": 10e-6 + b / (hbm * 0.9)} for b in (1e7, 1e8, 1e9)]
    copies = [{"bytes": b, "seconds": 2e-6 + b / (hbm * 0.85)} for b in (2**17, 2**32)]
    base = replace(GPUS["h100-sxm"], bf16_flops=peak, bandwidth_bytes_per_s=hbm)
    k = cal.solve_kernels(base, gemm, attention, decode, copies)
    assert k.mla_decode_attention == GPUS["h100-sxm"].kernels.mla_decode_attention  # the preset's (the docstring)
    assert (k.gemm.compute, k.gemm.bandwidth, k.gemm.call_seconds) == (pytest.approx(0.75), pytest.approx(0.8),
                                                                       pytest.approx(4e-6))
    assert k.prefill_attention.compute == pytest.approx(0.6) and k.attention_half_tokens == pytest.approx(2000)
    assert (k.decode_attention.bandwidth, k.decode_attention.call_seconds) == (pytest.approx(0.9), pytest.approx(10e-6))
    assert (k.elementwise.bandwidth, k.elementwise.call_seconds) == (pytest.approx(0.85), pytest.approx(2e-6))
    assert k.moe_gemm_fp8 == GPUS["h100-sxm"].kernels.moe_gemm_fp8  # not measured: the preset's


def test_prefill_attention_fit_falls_back_to_the_longest_prompt_on_noise():
    # Efficiency falling with length has no e(L) = e L / (L + h) with h >= 0: the longest prompt's, flat.
    points = [{"tokens": 1024, "flops": 1e12, "seconds": 2e-3}, {"tokens": 4096, "flops": 1e12, "seconds": 4e-3}]
    assert cal.solve_prefill_attention(points, 1e15) == (pytest.approx(0.25), 0.0)


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
    for kind in ("gemm", "prefill_attention", "decode_attention", "elementwise"):
        for key in ("compute", "bandwidth"):
            assert 0 < gpu["kernels"][kind][key] <= 1
    # kvplan.models runs MLA's prefill through the same flash kernel: the profile says so.
    assert gpu["kernels"]["mla_prefill_attention"] == gpu["kernels"]["prefill_attention"]
    assert gpu["kernels"]["mla_half_tokens"] == gpu["kernels"]["attention_half_tokens"]
    # The profile's predictions use its kernels: every reference point has a prediction and an error.
    for point in profile["measured"]["decode_points"] + profile["measured"]["prefill_points"]:
        assert point["predicted_seconds"] > 0 and point["error"] == pytest.approx(point["predicted_seconds"] / point["seconds"] - 1)
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(profile))
    loaded = gpu_from_file(path)
    assert dataclasses.asdict(loaded.kernels) == gpu["kernels"]
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
    # A 4096^3 GEMM in 0.1 ms is 1.37e15 FLOP/s, above the h100-sxm's 989.4e12 peak: a timing or count error.
    from kvplan.units import MeasurementError

    gpu = GPUS["h100-sxm"]
    points = {"gemm": [{"m": 4096, "n": 4096, "k": 4096, "bytes_per_element": 2, "seconds": 1e-4}],
              "prefill_attention": [], "decode_attention": [], "copy": []}
    with pytest.raises(MeasurementError, match="gemm 4096x4096x4096 ran at 1.374e\\+15 FLOP/s, 139%"):
        cal._check_below_peaks(gpu, points)
    points["gemm"][0]["seconds"] = 2e-4  # 6.9e14 FLOP/s: fine
    cal._check_below_peaks(gpu, points)


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
    measured, gpu = profile["measured"], GPUS["h100-sxm"]
    assert measured["copy_bandwidth_bytes_per_s"] <= gpu.bandwidth_bytes_per_s
    assert measured["matmul_flops"] <= gpu.bf16_flops
    points = measured["kernel_points"]
    assert all(2 * p["m"] * p["n"] * p["k"] / p["seconds"] <= gpu.bf16_flops for p in points["gemm"])
    assert all(p["flops"] / p["seconds"] <= gpu.bf16_flops for p in points["prefill_attention"])
    assert all(p["bytes"] / p["seconds"] <= gpu.bandwidth_bytes_per_s
               for p in points["decode_attention"] + points["copy"])


def test_reference_fit_recovers_elementwise_and_attention_figures():
    # The reference network's "measured" points are made by the estimate itself with known elementwise
    # (bandwidth 0.3, 20 us a call) and attention figures (prefill compute 0.5, decode bandwidth 0.6); starting
    # from the preset's figures, the fit must find those figures (each point's seconds are linear in them).
    model = get_preset("llama-3.1-8b")
    gpu = GPUS["h100-sxm"]
    truth = replace(gpu.kernels, elementwise=cal.Kernel(1.0, 0.3, 20e-6),
                    prefill_attention=replace(gpu.kernels.prefill_attention, compute=0.5),
                    decode_attention=replace(gpu.kernels.decode_attention, bandwidth=0.6))

    def estimator_for(kernels):
        return Estimator(model, deployment_for(replace(gpu, kernels=kernels), prefill_chunk=0))

    measured = estimator_for(truth)
    prefill = [{"batch": b, "context": c, "seconds": measured.row(b, c)["prefill_seconds"]}
               for b, c in ((1, 4096), (1, 131072))]
    decode = [{"batch": b, "context": c, "seconds": measured.row(b, c)["decode_seconds_per_token"]}
              for b, c in ((1, 4096), (1, 32768), (8, 32768))]
    k = cal.fit_reference(gpu.kernels, estimator_for, prefill, decode, rounds=8)
    assert k.elementwise.bandwidth == pytest.approx(0.3, rel=1e-2)
    assert k.elementwise.call_seconds == pytest.approx(20e-6, rel=1e-2)
    assert k.prefill_attention.compute == pytest.approx(0.5, rel=1e-2)
    assert k.decode_attention.bandwidth == pytest.approx(0.6, rel=1e-2)


def test_reference_fit_leaves_kernels_alone_when_points_cannot_separate_the_unknowns():
    model = get_preset("llama-3.1-8b")
    gpu = GPUS["h100-sxm"]

    def estimator_for(kernels):
        return Estimator(model, deployment_for(replace(gpu, kernels=kernels), prefill_chunk=0))

    one_point = [{"batch": 1, "context": 4096, "seconds": 1.0}]
    assert cal.fit_reference(gpu.kernels, estimator_for, one_point, one_point) == gpu.kernels


def test_latent_decode_fit_recovers_mla_decode_figures():
    # An MLA network's "measured" decode steps made by the estimate itself with known MLA decode attention
    # figures (0.7 of bandwidth, 30 us a layer); from the preset's, the fit finds them and leaves the rest alone.
    from kvplan.api import resolve_model
    from kvplan.models import sliced

    model = resolve_model("llama-3.1-8b", "mla")
    gpu = GPUS["h100-sxm"]
    truth = replace(gpu.kernels, mla_decode_attention=cal.Kernel(1.0, 0.7, 30e-6))

    def estimator_for(kernels):
        return Estimator(sliced(model, 2), deployment_for(replace(gpu, kernels=kernels), prefill_chunk=0))

    measured = estimator_for(truth)
    decode = [{"batch": b, "context": c, "seconds": measured.row(b, c)["decode_seconds_per_token"]}
              for b, c in ((1, 4096), (1, 32768), (8, 32768))]
    k = cal.fit_latent_decode(gpu.kernels, estimator_for, decode)
    assert k.mla_decode_attention.bandwidth == pytest.approx(0.7, rel=1e-6)
    assert k.mla_decode_attention.call_seconds == pytest.approx(30e-6, rel=1e-6)
    assert replace(k, mla_decode_attention=gpu.kernels.mla_decode_attention) == gpu.kernels
    assert cal.fit_latent_decode(gpu.kernels, estimator_for, decode[:1]) == gpu.kernels  # one step: no solve
