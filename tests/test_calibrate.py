"""`kvplan calibrate` and the estimate fields a calibration profile sets (attention efficiency)."""

from dataclasses import replace

import pytest

from kvplan.api import deployment_for
from kvplan.estimate import Estimator
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
