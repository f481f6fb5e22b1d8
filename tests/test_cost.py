"""kvplan cost: prefill and decode $ per million tokens against token position."""

import pytest

import kvplan
from kvplan.costcurve import cost_at, cost_curve, positions
from plan_helpers import assert_one_line_error, png_size


def estimator(model="llama-3.1-8b", gpu="h100", **options):
    (est,) = kvplan.estimators(model, gpu, **options)
    return est


def test_decode_point_is_the_estimate_at_that_context():
    # The token at 0-based position p is written by the decode step of a context of p + 1 tokens.
    est = estimator()
    for p in (0, 4095, 100_000):
        expected = kvplan.estimate("llama-3.1-8b", "h100", context=p + 1, batch=4)["decode_usd_per_mtok"]
        assert cost_at(est, p, batch=4)["decode_usd_per_mtok"] == pytest.approx(expected)


def test_prefill_at_zero_is_a_whole_prompt_of_one_chunk():
    est = estimator()
    expected = kvplan.estimate("llama-3.1-8b", "h100", context=8192, batch=2)["prefill_usd_per_mtok"]
    assert cost_at(est, 0, batch=2, chunk=8192)["prefill_usd_per_mtok"] == pytest.approx(expected)


def test_prefill_chunk_attention_grows_by_hand():
    # Dense GQA, no window: each of the C queries of a chunk starting at p attends p more keys than from 0, at
    # 4 x heads x head_dim FLOPs per pair: 32 layers x 4 x 32 x 128 x C x p more FLOPs, nothing else changes.
    est = estimator()
    chunk, start = 1024, 50_000
    more = est.prefill(1, chunk, start)[0] - est.prefill(1, chunk, 0)[0]
    assert more == 32 * 4 * 32 * 128 * chunk * start


def test_dsa_decode_reads_topk_latents_and_every_indexer_key():
    # deepseek-v3.2-exp: 61 layers; per token per layer the latent is 512 + 64 = 576 bf16 elements (1152 bytes)
    # and the indexer key 128 fp8 bytes + one 4-byte scale (132 bytes). At 65536 tokens a decode step reads all
    # indexer keys but only the 2048 selected latents.
    est = estimator("deepseek-v3.2-exp", "h800")
    assert est.decode_cache_read_bytes(1, 65536) == 61 * (132 * 65536 + 1152 * 2048)
    assert est.kv_cache_bytes(1, 65536) == 61 * (132 + 1152) * 65536
    # MLA has no indexer: it reads its whole cache.
    mla = estimator("deepseek-v3.2-exp", "h800", attention="mla")
    assert mla.decode_cache_read_bytes(1, 65536) == mla.kv_cache_bytes(1, 65536) == 61 * 1152 * 65536


def test_dsa_flat_mla_rising_as_published():
    # DeepSeek-V3.2's H800 comparison, served as DeepSeek serves it (attention data-parallel, experts over
    # ep): dense MLA's cost climbs with position, DSA's stays nearly flat. (Under tp 8 every rank runs the
    # whole indexer and reads every selected latent, and DSA's prefill costs more than MLA's.)
    curves = {}
    for spec in ("native", "mla"):
        est = estimator("deepseek-v3.2-exp", "h800", gpus=8, dp=8, ep=8, attention=spec, weight_dtype="fp8")
        curves[spec] = cost_curve(est, 131072, batch=32, points=9)
    for phase in ("prefill_usd_per_mtok", "decode_usd_per_mtok"):
        dsa = [r[phase] for r in curves["native"]]
        mla = [r[phase] for r in curves["mla"]]
        assert mla == sorted(mla) and dsa == sorted(dsa)  # both non-decreasing in position
        # Per-operation kernels add position-independent time (expert GEMMs at 0.3 of fp8 peak, calls), so
        # both curves rise less than the published chart's; MLA's still rises more.
        assert mla[-1] / mla[0] > dsa[-1] / dsa[0]
        assert dsa[-1] < mla[-1]


def test_positions_cover_zero_to_context():
    assert positions(4096, 5) == [0, 1023, 2047, 3071, 4095]
    assert positions(1, 65) == [0]


def test_cli_json_and_plot(run_json, tmp_path):
    path = tmp_path / "cost.png"
    rows = run_json("cost", "--model", "llama-3.1-8b", "--gpu", "h100", "--context", "32k",
                    "--attention", "mla", "--points", "17", "--plot", str(path))
    assert len(rows) == 2 * 17
    assert {r["attention"] for r in rows} == {"gqa(kv_heads=8)", "mla(kv_lora_rank=512)"}
    for row in rows:
        assert set(row) >= {"model", "attention", "gpu", "gpus", "kv_dtype", "batch", "chunk", "position",
                            "prefill_usd_per_mtok", "decode_usd_per_mtok", "decode_seconds_per_token"}
    assert [r["position"] for r in rows[:17]] == positions(32768, 17)
    # Every point is the library's curve: native, then the re-cast, each priced in 8k-token chunks.
    expected = [cost_curve(estimator(attention=spec), 32768, batch=1, chunk=8192, points=17) for spec in ("native", "mla")]
    assert rows == expected[0] + expected[1]
    assert png_size(path) == (1430, 550)  # two 6.5 x 5 inch panels at 110 dpi
    assert path.stat().st_size > 10_000


def test_cli_table_warns_when_it_does_not_fit(run_cli):
    code, out, err = run_cli("cost", "--model", "llama-3.1-8b", "--gpu", "h100", "--context", "128k",
                             "--batch", "8")
    assert code == 0
    assert "kvplan cost by token position" in out and "131,071" in out
    assert "does not fit" in err
    # The warning gives the estimate's memory per GPU at batch 8 and 128k (prefill in chunks of 8192 tokens).
    row = estimator().row(8, 131072)
    assert not row["fits"]
    assert err.splitlines() == [f"kvplan: warning: gqa(kv_heads=8) at batch 8 and 128k tokens needs "
                                f"{row['total_bytes_per_gpu'] / 2**30:,.2f} GiB per GPU of 71.68 (does not fit); "
                                f"costs estimated anyway"]


@pytest.mark.parametrize("args", [
    ["--chunk", "0"],
    ["--points", "1"],
    ["--batch", "-3"],
    ["--context", "many"],
    ["--attention", "sparse"],
    ["--plot", "cost.svg"],
])
def test_cli_bad_input(run_cli, args):
    assert_one_line_error(*run_cli("cost", "--model", "llama-3.1-8b", "--gpu", "h100", *args))
