"""kvplan recommend: options ranked by decode $/Mtok, each re-checked against kvplan estimate."""

import math
import warnings

import pytest

import kvplan
from kvplan.recommend import Change, candidate_changes, recommend
from plan_helpers import assert_one_line_error

GiB = 2**30


def base(model="llama-3.1-8b", gpu="h100", **options):
    (estimator,) = kvplan.estimators(model, gpu, **options)
    return estimator


def estimate_option(model: str, gpu: str, option: dict, batch: int) -> dict:
    """The option's configuration through the public API, independently of recommend's own evaluation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kvplan.estimate(model, gpu, context=option["context"], batch=batch, kv_dtype=option["kv_dtype"],
                               attention=option["attention_spec"], gpus=option["gpus"], block_size=option["block_size"])


def test_ranked_cheapest_first_and_every_option_fits():
    result = recommend(base(), context=131072, batch=4)
    options = result.options
    assert options, "llama-3.1-8b at 128k x 4 has options that fit on one H100 or more"
    prices = [o["decode_usd_per_mtok"] for o in options]
    assert prices == sorted(prices)
    assert [o["rank"] for o in options] == list(range(1, len(options) + 1))
    for option in options:
        row = estimate_option("llama-3.1-8b", "h100", option, batch=4)
        assert row["fits"], option["change"]
        assert row["decode_usd_per_mtok"] == pytest.approx(option["decode_usd_per_mtok"])
        assert row["total_bytes_per_gpu"] == option["total_bytes_per_gpu"]


def test_baseline_numbers_are_the_before_column():
    result = recommend(base(), context=32768, batch=2)
    row = kvplan.estimate("llama-3.1-8b", "h100", context=32768, batch=2)
    assert result.baseline["fits"] == row["fits"]
    for option in result.options:
        assert option["decode_usd_per_mtok_before"] == row["decode_usd_per_mtok"]
        assert option["prefill_usd_per_mtok_before"] == row["prefill_usd_per_mtok"]


def test_fp8_frees_half_the_bf16_cache():
    # llama-3.1-8b at 32k, batch 1: bf16 cache = 32 layers x 2 x 8 heads x 128 x 2 bytes x 32768 = 4 GiB;
    # fp8 stores 1 byte per element, so it frees 2 GiB per GPU and nothing else changes.
    result = recommend(base(), context=32768, batch=1, max_changes=1)
    (fp8,) = [o for o in result.options if o["change"] == "kv fp8"]
    assert fp8["memory_freed_bytes_per_gpu"] == 32 * 2 * 8 * 128 * 1 * 32768 == 2 * GiB


def test_attention_changes_carry_the_training_caveat():
    result = recommend(base(), context=131072, batch=1)
    recast = [o for o in result.options if o["attention_spec"] != "native"]
    assert recast
    for option in recast:
        assert "needs a model trained" in option["caveat"]
    for option in result.options:
        if option["attention_spec"] == "native":
            assert "needs a model trained" not in option["caveat"]


def test_candidates_skip_what_changes_nothing():
    changes = candidate_changes(base(), context=131072, max_changes=2)
    # llama-3.1-8b is GQA with 8 KV heads already: re-casting to gqa would change nothing.
    assert all(c.attention != "gqa" for c in changes)
    assert all(0 < c.count <= 2 for c in changes)
    assert Change(kv_dtype="fp8", tp=2) in changes and Change(block_size=16) in changes
    # A window no shorter than the context changes nothing either.
    assert all(c.attention != "window:4096" for c in candidate_changes(base(), context=4096))


def test_tensor_parallel_sizes_that_do_not_split_the_heads_are_skipped():
    # qwen2.5-7b has 28 attention heads = 4 x 7: tp 2 and 4 divide them, tp 8 does not (28 / 8 = 3.5), and
    # engines refuse it. Re-casting keeps the head count, so no combination may use tp 8.
    qwen = base("qwen2.5-7b")
    assert qwen.model.attention.n_heads == 28
    tps = {c.tp for c in candidate_changes(qwen, context=131072, max_changes=2)}
    assert tps == {None, 2, 4}
    result = recommend(qwen, context=131072, batch=8)
    assert result.options and all(o["tp"] in (1, 2, 4) for o in result.options)
    # llama-3.1-8b's 32 heads split over every choice, so tp 8 stays a candidate there.
    assert 8 in {c.tp for c in candidate_changes(base(), context=131072)}


def test_concurrency_uses_the_largest_batch_that_fits():
    result = recommend(base(), context=32768, concurrency=64)
    assert result.options
    for option in result.options[:8]:
        batch = option["batch"]
        assert 1 <= batch <= 64
        assert option["copies"] == math.ceil(64 / batch)
        assert option["gpus_in_all"] == option["copies"] * option["gpus"]
        assert estimate_option("llama-3.1-8b", "h100", option, batch)["fits"]
        if batch < 64:
            assert not estimate_option("llama-3.1-8b", "h100", option, batch + 1)["fits"]


def test_price_cap_filters():
    cap = 2.0
    result = recommend(base(), context=32768, batch=8, max_usd_per_mtok=cap)
    assert result.options and all(o["decode_usd_per_mtok"] <= cap for o in result.options)
    assert not recommend(base(), context=32768, batch=8, max_usd_per_mtok=1e-6).options


def test_nothing_fits_is_said_plainly(run_cli, run_json):
    # llama-3.1-405b: ~406e9 params x 2 bytes = ~812e9 bytes of weights; 8 RTX 4090s hold 8 x 25.8e9 = 206e9.
    code, out, err = run_cli("recommend", "--model", "llama-3.1-405b", "--gpu", "rtx-4090", "--context", "128k")
    assert code == 0 and out == ""
    assert err.startswith("kvplan: nothing fits:") and "closest" in err
    result = recommend(base("llama-3.1-405b", "rtx-4090"), context=131072)
    closest = result.closest
    assert err == (f"kvplan: nothing fits: none of {result.considered} options (up to 2 changes) serves 128k tokens at "
                   f"batch 1 on rtx-4090; the closest, {closest['change']} on {closest['gpus']} GPU(s), needs "
                   f"{closest['total_bytes_per_gpu'] / GiB:,.2f} GiB per GPU of {24564 / 1024:,.2f}\n")
    rows = run_json("recommend", "--model", "llama-3.1-405b", "--gpu", "rtx-4090", "--context", "128k")
    assert rows == []


def test_cli_json_shape(run_json):
    rows = run_json("recommend", "--model", "llama-3.1-8b", "--gpu", "h100", "--context", "64k",
                    "--concurrency", "16", "--max-usd-per-mtok", "5")
    assert rows and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        for key in ("change", "caveat", "fits", "batch", "copies", "gpus_in_all", "memory_freed_bytes_per_gpu",
                    "decode_tokens_per_second", "decode_usd_per_mtok", "decode_usd_per_mtok_before",
                    "prefill_usd_per_mtok", "prefill_usd_per_mtok_before", "total_bytes_per_gpu"):
            assert key in row
        assert row["fits"] is True and row["decode_usd_per_mtok"] <= 5
    assert rows == recommend(base(), context=65536, concurrency=16, max_usd_per_mtok=5).options


def test_cli_table(run_cli):
    code, out, err = run_cli("recommend", "--model", "llama-3.1-8b", "--gpu", "h100", "--context", "128k",
                             "--batch", "4", "--top", "3")
    assert code == 0, err
    assert "kvplan recommend" in out and "As given" in out and "->" in out
    options = recommend(base(), context=131072, batch=4).options
    shown = [line for line in out.splitlines() if line.startswith("│ ") and line[2].isdigit()]
    assert [line.split("│")[2].strip() for line in shown] == [o["change"] for o in options[:3]]


@pytest.mark.parametrize("args", [
    ["--batch", "2", "--concurrency", "4"],
    ["--kv-dtype", "fp8,int8"],
    ["--kv-dtype", "fp7"],
    ["--max-usd-per-mtok", "-1"],
    ["--concurrency", "0"],
    ["--context", "12q"],
])
def test_cli_bad_input(run_cli, args):
    assert_one_line_error(*run_cli("recommend", "--model", "llama-3.1-8b", "--gpu", "h100", *args))
