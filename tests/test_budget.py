"""kvplan budget: the longest context and largest batch agree with kvplan estimate at the boundary."""

import warnings

import pytest

import kvplan
from kvplan.budget import WEIGHTS_EXCEED, budget_row, largest_fitting, longest_context, largest_batch
from plan_helpers import assert_one_line_error, png_size

GiB = 2**30


def fits(**kwargs) -> bool:
    with warnings.catch_warnings():  # boundaries lie beyond max_position_embeddings: expected here
        warnings.simplefilter("ignore")
        return kvplan.estimate(**kwargs)["fits"]


def test_largest_fitting_search():
    # A threshold at 1000: the search must land exactly on it, and on 0 when nothing fits.
    assert largest_fitting(lambda n: n <= 1000) == 1000
    assert largest_fitting(lambda n: n <= 1) == 1
    assert largest_fitting(lambda n: False) == 0


@pytest.mark.parametrize("attention", [None, "mla", "tpa", "dsa", "window:4096"])
def test_longest_context_is_the_boundary(attention):
    # Whole-prompt prefill: with chunked prefill a 4096-token window holds bounded memory at any context.
    (est,) = kvplan.estimators("llama-3.1-8b", "h100", attention=attention, prefill_chunk=0)
    boundary = longest_context(est, batch=2)
    kw = dict(model="llama-3.1-8b", gpu="h100", batch=2, attention=attention, prefill_chunk=0)
    assert fits(context=boundary.value, **kw)
    assert not fits(context=boundary.value + 1, **kw)
    assert boundary.headroom_bytes >= 0


def test_longest_context_in_whole_blocks():
    (est,) = kvplan.estimators("llama-3.1-8b", "h100", block_size=16)
    context = longest_context(est, batch=1).value
    assert context % 16 == 0
    kw = dict(model="llama-3.1-8b", gpu="h100", batch=1, block_size=16)
    assert fits(context=context, **kw) and not fits(context=context + 16, **kw)


def test_longest_context_matches_the_closed_form():
    # Dense attention, no window, no paging: memory per GPU is a + b * context (cache and flash activations both
    # linear in context, whole prompts prefilled at once), so the boundary is floor((M - a) / b), computed here
    # from three estimates, not a search.
    row = lambda c: kvplan.estimate("llama-3.1-8b", "h100", context=c, batch=1, prefill_chunk=0)["total_bytes_per_gpu"]
    b = row(2) - row(1)
    a = row(1) - b
    assert row(1001) == a + 1001 * b  # linear, as assumed
    memory = kvplan.estimate("llama-3.1-8b", "h100", context=1)["usable_memory_bytes"]  # 0.9 x 79.65 GiB
    (est,) = kvplan.estimators("llama-3.1-8b", "h100", prefill_chunk=0)
    assert longest_context(est, 1).value == (memory - a) // b


def test_largest_batch_is_the_boundary():
    # Whole-prompt prefill (chunked prefill, the default, bounds activations by its 8192-token chunk).
    (est,) = kvplan.estimators("llama-3.1-8b", "h100", kv_dtype="fp8", prefill_chunk=0)
    boundary = largest_batch(est, context=32768)
    kw = dict(model="llama-3.1-8b", gpu="h100", context=32768, kv_dtype="fp8", prefill_chunk=0)
    assert boundary.value > 1
    assert fits(batch=boundary.value, **kw) and not fits(batch=boundary.value + 1, **kw)
    # Per token, prefill activations take 2 bytes x (2 x 4096 residual + 3 x 14336 feed-forward) = 102,400 bytes,
    # the fp8 cache 32 layers x 2 x 8 heads x 128 x 1 byte = 65,536 bytes: the activations bind.
    assert boundary.binding == "activations"
    row = boundary.row
    assert row["activation_bytes_per_gpu"] > row["kv_cache_bytes_per_gpu"] == boundary.value * 32768 * 65536


def test_memory_override_is_the_budget():
    # 16 GiB + 4 GiB of room: llama-3.1-8b's bf16 weights are 8.03e9 params x 2 bytes ~ 14.96 GiB.
    (est,) = kvplan.estimators("llama-3.1-8b", "h100", memory_bytes=20 * GiB)
    context = longest_context(est, 1).value
    row = est.row(1, context)
    usable = int(20 * GiB * 0.9)  # vLLM's default --gpu-memory-utilization
    assert row["gpu_memory_bytes"] == 20 * GiB and row["usable_memory_bytes"] == usable
    assert row["total_bytes_per_gpu"] <= usable < est.row(1, context + 1)["total_bytes_per_gpu"]


def test_weights_alone_exceed_memory():
    # llama-3.1-70b: ~70.6e9 params x 2 bytes = ~141e9 bytes of bf16 weights > one RTX 4090's 24564 MiB (25.8e9).
    (est,) = kvplan.estimators("llama-3.1-70b", "rtx-4090")
    assert est.weights_bytes_per_gpu > 24564 * 2**20
    row = budget_row(est, batch=1, context=4096)
    assert row["weights_exceed_memory"]
    assert row["max_context"] == 0 and row["max_batch"] == 0
    assert row["max_context_binding"] == row["max_batch_binding"] == WEIGHTS_EXCEED
    assert row["max_context_decode_usd_per_mtok"] is None
    assert row["note"].startswith("weights alone exceed memory")


def test_cli_says_weights_exceed_plainly(run_cli):
    code, out, err = run_cli("budget", "--model", "llama-3.1-70b", "--gpu", "rtx-4090")
    assert code == 0
    assert "weights alone exceed memory" in out
    # The note under the table: the estimate's bf16 weights against the RTX 4090's 24564 MiB.
    (est,) = kvplan.estimators("llama-3.1-70b", "rtx-4090")
    assert (f"gqa(kv_heads=8), kv bf16: weights alone exceed memory: {est.weights_bytes_per_gpu / GiB:,.2f} GiB of "
            f"weights per GPU (plus the reserve) vs {int(24564 * 2**20 * 0.9) / GiB:,.2f} GiB usable; add GPUs or "
            f"quantize the weights"
            in out.splitlines())


def test_cli_json_shape(run_json):
    rows = run_json("budget", "--model", "llama-3.1-8b", "--gpu", "h100", "--batch", "2", "--context", "32k",
                    "--attention", "gqa,mla,window:4096", "--memory", "80GiB", "--prefill-chunk", "0")
    # native first; gqa re-casts llama-3.1-8b into what it already is, so it is not repeated.
    assert [r["attention"] for r in rows] == ["gqa(kv_heads=8)", "mla(kv_lora_rank=512)", "gqa(kv_heads=8)+window(4096)"]
    for row in rows:
        assert row["batch"] == 2 and row["context"] == 32768 and row["gpu_memory_bytes"] == 80 * GiB
        for key in ("max_context", "max_batch", "max_context_binding", "max_batch_binding", "max_context_headroom_bytes",
                    "max_batch_headroom_bytes", "max_context_decode_usd_per_mtok", "max_batch_prefill_usd_per_mtok",
                    "weights_bytes_per_gpu", "kv_bytes_per_token", "note"):
            assert key in row
        assert isinstance(row["max_context"], int) and row["max_context"] > 0
        assert row["max_context_binding"] in ("cache", "activations")
    # The same boundaries as the library's searches on each estimator.
    for row, spec in zip(rows, ["native", "mla", "window:4096"]):
        (est,) = kvplan.estimators("llama-3.1-8b", "h100", attention=spec, memory_bytes=80 * GiB, prefill_chunk=0)
        assert row["max_context"] == longest_context(est, 2).value
        assert row["max_batch"] == largest_batch(est, 32768).value


def test_cli_table_and_plot(run_cli, tmp_path):
    path = tmp_path / "budget.png"
    code, out, err = run_cli("budget", "--model", "llama-3.1-8b", "--gpu", "h100", "--attention", "mla",
                             "--plot", str(path))
    assert code == 0, err
    assert "longest context" in out and "mla(kv_lora_rank=512)" in out
    (est,) = kvplan.estimators("llama-3.1-8b", "h100", attention="mla")
    (line,) = [line for line in out.splitlines() if line.startswith("│ mla(kv_lora_rank=512)")]
    assert f" {longest_context(est, 1).value:,} " in line
    assert f"wrote {path}" in err
    assert png_size(path) == (880, 550)  # 8 x 5 inches at 110 dpi
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("args", [
    ["--memory", "lots"],
    ["--memory", "0GiB"],
    ["--batch", "0"],
    ["--context", "abc"],
    ["--attention", "gqa:kv_heads=5"],
    ["--plot", "/no/such/folder/b.png"],
    ["--plot", "budget.jpg"],
])
def test_cli_bad_input(run_cli, args):
    assert_one_line_error(*run_cli("budget", "--model", "llama-3.1-8b", "--gpu", "h100", *args))
