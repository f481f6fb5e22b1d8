"""`kvplan profile` and `kvplan calibrate` on a CUDA GPU (skipped without one)."""

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_profile_on_the_gpu_measures_every_figure(run_json):
    rows = run_json("profile", "-m", "t6-medium-mha", "-a", "native", "-a", "mla", "-a", "tpa", "-a", "window:512",
                    "--layers", "2", "-c", "2k", "-b", "1,2", "--repeats", "3")
    assert len(rows) == 8
    for row in rows:
        assert row["status"] == "ok" and row["device"] == "cuda" and row["dtype"] == "bfloat16"
        assert row["cache_bytes_measured"] == row["cache_bytes_estimate"]
        assert row["prefill_flops_counted_measured"] == row["prefill_flops_counted_estimate"]
        assert row["prefill_peak_bytes_measured"] > 0 and row["prefill_seconds_measured"] > 0
        assert row["decode_mode"] == "cuda graph" and row["decode_seconds_measured"] > 0
        assert row["gpu_name"] and row["gpu_memory_bytes"] > 0


def test_profile_records_a_row_too_large_for_the_gpu(run_json):
    # 8 sequences of 1M tokens of llama-3.1-8b's first layer: 8 x 2^20 x 2 (K, V) x 8 x 128 x 2 bytes = 32 GiB of
    # cache, and prefill activations of 8 x 2^20 tokens x ~100 KB: far beyond any GPU's memory.
    (row,) = run_json("profile", "-m", "llama-3.1-8b", "--layers", "1", "-c", "1M", "-b", "8", "--repeats", "1")
    assert row["status"].startswith("does not fit (measured)") and row["fits_estimate"] is False
    # The sweep went on: memory came back.
    assert torch.cuda.memory_allocated() < 2**30


def test_calibrate_on_the_gpu(tmp_path, run_cli, run_json):
    path = tmp_path / "profile.json"
    code, _, err = run_cli("calibrate", "--out", str(path), "--repeats", "3")
    assert code == 0, err
    profile = json.loads(path.read_text())
    gpu = profile["gpu"]
    for kind in ("gemm", "prefill_attention", "decode_attention", "elementwise"):
        assert 0 < gpu["kernels"][kind]["bandwidth"] <= 1 and 0 < gpu["kernels"][kind]["compute"] <= 1
    assert 0 < profile["measured"]["copy_efficiency"] <= 1.05
    (row,) = run_json("estimate", "-m", "llama-3.1-8b", "--hardware-profile", str(path))
    assert row["gpu"] == gpu["name"]
