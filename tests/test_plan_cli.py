"""`kvplan plan` prints what kvplan.plan.search ranks, and refuses impossible targets in one line."""

import pytest

from kvplan.plan import search, workload_for

ARGS = ("plan", "-m", "llama-3.1-8b", "--isl", "4k", "--osl", "512", "--ttft", "2s", "--tpot", "50ms",
        "--gpu", "h100,a100", "--max-gpus", "4", "--kv-dtype", "bf16,fp8", "--top", "3")


def test_plan_rows_are_the_search_rows(run_json):
    rows = run_json(*ARGS)
    expected = search("llama-3.1-8b", workload_for("4k", "512", "2s", "50ms"), gpu="h100,a100", max_gpus=4,
                      kv_dtype="bf16,fp8", attention=["native"], top=3).rows
    assert [r["rank"] for r in rows] == [r["rank"] for r in expected] == [1, 2, 3]
    for got, want in zip(rows, expected):
        assert got["usd_per_mtok"] == pytest.approx(want["usd_per_mtok"], rel=1e-12)
        assert (got["gpu"], got["gpus"], got["tp"], got["batch"], got["kv_dtype"]) == \
            (want["gpu"], want["gpus"], want["tp"], want["batch"], want["kv_dtype"])
        assert got["ttft_seconds"] <= 2 and got["tpot_seconds"] <= 0.05
    costs = [r["usd_per_mtok"] for r in rows]
    assert costs == sorted(costs)


def test_plan_table_shows_every_plan(run_cli):
    code, out, err = run_cli(*ARGS)
    assert code == 0, err
    table_lines = [line for line in out.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in table_lines] == ["1", "2", "3"]


def test_impossible_targets_name_the_nearest_miss(run_cli):
    code, out, err = run_cli("plan", "-m", "llama-3.1-70b", "--isl", "8k", "--osl", "1k", "--ttft", "2s",
                             "--tpot", "1ms", "--gpu", "h100", "--max-gpus", "8")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "best TPOT" in err and "target 1 ms" in err
