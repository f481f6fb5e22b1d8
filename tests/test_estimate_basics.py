"""Hand-derived checks of the core formulas on published models."""

import kvplan


def test_llama_8b_cache_at_128k():
    # 32 layers x 2 (K, V) x 8 KV heads x 128 head_dim x 2 bytes (bf16) = 131072 bytes per token.
    row = kvplan.estimate("llama-3.1-8b", context="128k", batch=1)
    assert row["kv_bytes_per_token"] == 32 * 2 * 8 * 128 * 2
    assert row["kv_cache_bytes"] == 32 * 2 * 8 * 128 * 2 * 131072


def test_fp8_halves_bf16_cache():
    bf16 = kvplan.estimate("llama-3.1-8b", context="32k", batch=4)
    fp8 = kvplan.estimate("llama-3.1-8b", context="32k", batch=4, kv_dtype="fp8")
    assert 2 * fp8["kv_cache_bytes"] == bf16["kv_cache_bytes"]
