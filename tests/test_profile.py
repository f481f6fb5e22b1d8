"""`kvplan profile` on the CPU with tiny models: figures against the estimate, resume, OOM rows, kills."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kvplan.profilers import store, sweep
from kvplan.profilers.measure import Settings

TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
        "max_position_embeddings": 4096, "tie_word_embeddings": False}
KINDS = ["mha", "mqa", "gqa:kv_heads=2", "mla", "tpa", "dsa:index_n_heads=2,index_head_dim=16,index_topk=8",
         "window:8", "window:size=8,global_every=2"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def profile_json(tiny, run_cli, *extra):
    code, out, err = run_cli("profile", "-m", tiny, "--device", "cpu", "--repeats", "1", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_every_kind_cache_and_flops_match_the_estimate(tiny, run_cli):
    args = [arg for kind in KINDS for arg in ("-a", kind)]
    rows = profile_json(tiny, run_cli, *args, "-c", "16,40", "-b", "1,2")
    assert len(rows) == len(KINDS) * 2 * 2
    for row in rows:
        assert row["status"] == "ok"
        # Cache bytes: the allocated tensors equal the estimate exactly, for every kind.
        assert row["cache_bytes_measured"] == row["cache_bytes_estimate"], row["attention"]
        assert row["weights_bytes_measured"] == row["weights_bytes_estimate"], row["attention"]
        # FlopCounterMode sees the whole rectangles the kernels are handed: the counted figure is exact.
        assert row["prefill_flops_counted_measured"] == row["prefill_flops_counted_estimate"], row["attention"]
        assert row["prefill_seconds_measured"] > 0 and row["decode_seconds_measured"] > 0
        assert row["decode_flops_measured"] == row["decode_flops_estimate"], row["attention"]


def test_cache_bytes_by_hand(tiny, run_cli):
    # GQA with 2 KV heads of 16: 2 layers x (K, V) x 2 heads x 16 x 2 bytes (bf16) x batch 2 x context 40.
    (row,) = profile_json(tiny, run_cli, "-c", "40", "-b", "2")
    assert row["cache_bytes_measured"] == 2 * 2 * 2 * 16 * 2 * 2 * 40
    # Window 8 on both layers: each keeps min(40, 8) token slots.
    (row,) = profile_json(tiny, run_cli, "-a", "window:8", "-c", "40", "-b", "2")
    assert row["cache_bytes_measured"] == 2 * 2 * 2 * 16 * 2 * 2 * 8


def test_layers_slice_scales_to_full_depth(tiny, run_cli):
    (row,) = profile_json(tiny, run_cli, "--layers", "1", "-c", "32", "-b", "1")
    assert (row["layers"], row["full_layers"]) == (1, 2)
    # One layer's cache is measured; the full 2-layer depth doubles it (2 x (K, V) x 2 heads x 16 x 2 bytes x 32).
    assert row["cache_bytes_measured"] == 2 * 2 * 16 * 2 * 32
    assert row["cache_bytes_full_depth"] == 2 * row["cache_bytes_measured"]


def _settings():
    return Settings(device=torch.device("cpu"), dtype=torch.float32, repeats=1)


def _sweep(tiny, **changes):
    from kvplan.api import resolve_gpu

    base = dict(model=tiny, attentions=["gqa:kv_heads=2"], contexts=[16, 24], batches=[1, 2],
                estimate_gpu=resolve_gpu("h100-sxm"), settings=_settings())
    return sweep.Sweep(**{**base, **changes})


def test_resume_skips_rows_already_done(tiny, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    first = sweep.run(_sweep(tiny, contexts=[16]), str(out), progress=False)
    assert len(first) == 2
    measured = []
    real = sweep.measure_row
    monkeypatch.setattr(sweep, "measure_row", lambda desc, b, c, *a: (measured.append((b, c)), real(desc, b, c, *a)))
    rows = sweep.run(_sweep(tiny), str(out), resume=True, progress=False)
    assert measured == [(1, 24), (2, 24)]  # only the rows not in the file
    assert len(rows) == 4 and len(store.read_rows(out)) == 4
    assert [line.startswith("model,") for line in out.read_text().splitlines()].count(True) == 1  # header once


def test_existing_file_needs_resume(tiny, tmp_path):
    out = tmp_path / "results.csv"
    sweep.run(_sweep(tiny, contexts=[16], batches=[1]), str(out), progress=False)
    from kvplan.units import InputError

    with pytest.raises(InputError, match="--resume"):
        sweep.run(_sweep(tiny, contexts=[16], batches=[1]), str(out), progress=False)


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tiny, tmp_path, monkeypatch):
    real = sweep.measure_row

    def measure(desc, batch, context, kv, settings, out):
        if (batch, context) == (2, 16):
            out["phase"] = "prefill"
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real(desc, batch, context, kv, settings, out)

    monkeypatch.setattr(sweep, "measure_row", measure)
    freed = []
    monkeypatch.setattr(sweep, "free_memory", lambda device: freed.append(device))
    out = tmp_path / "results.csv"
    rows = sweep.run(_sweep(tiny), str(out), progress=False)
    assert [r["status"] for r in rows] == ["ok", "does not fit (measured) in prefill", "ok", "ok"]
    assert len(freed) == 4  # memory handed back after every row, the failed one included
    failed = rows[1]
    assert failed.get("prefill_seconds_measured") is None and failed["prefill_seconds_estimate"] > 0
    assert failed["fits_estimate"] is True  # the estimate's own verdict sits beside the measured one
    assert [r["status"] for r in store.read_rows(out)] == [r["status"] for r in rows]


def test_file_stays_valid_when_the_sweep_dies(tiny, tmp_path, monkeypatch):
    real = sweep.measure_row
    calls = []

    def measure(desc, batch, context, *rest):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while measuring the third row
        return real(desc, batch, context, *rest)

    monkeypatch.setattr(sweep, "measure_row", measure)
    out = tmp_path / "results.csv"
    with pytest.raises(KeyboardInterrupt):
        sweep.run(_sweep(tiny), str(out), progress=False)
    assert len(store.read_rows(out)) == 2
    # A kill in the middle of a write leaves a torn line: resume cuts it off and measures that row again.
    with out.open("a") as handle:
        handle.write("half a row,gqa")
    monkeypatch.setattr(sweep, "measure_row", real)
    rows = sweep.run(_sweep(tiny), str(out), resume=True, progress=False)
    assert len(rows) == 4
    with out.open(newline="") as handle:
        lines = list(csv.reader(handle))
    assert len(lines) == 5 and all(len(line) == len(sweep.COLUMNS) for line in lines)


def test_killed_process_loses_no_finished_row(tiny, tmp_path):
    out = tmp_path / "results.csv"
    args = [sys.executable, "-m", "kvplan", "profile", "-m", tiny, "--device", "cpu", "--repeats", "1", "--no-flops",
            "-c", "16,24,32,40,48,56,64,72", "-b", "1,2,3", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(store.read_rows(out)) < 2:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = store.read_rows(out)
    assert 2 <= len(done) < 24
    assert all(row["status"] == "ok" for row in done)
    resumed = sweep.run(_sweep(tiny, attentions=["native"], contexts=[16, 24, 32, 40, 48, 56, 64, 72],
                               batches=[1, 2, 3], settings=Settings(torch.device("cpu"), torch.float32, 1,
                                                                   count_flops=False)),
                        str(out), resume=True, progress=False)
    assert len(resumed) == 24 and len(store.read_rows(out)) == 24
    assert len({store.row_key(r) for r in store.read_rows(out)}) == 24


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_without_a_gpu_profile_says_so_and_fails(tiny, run_cli):
    code, out, err = run_cli("profile", "-m", tiny)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "--device cpu" in err


def test_csv_and_json_give_the_same_rows(tiny, run_cli):
    rows = profile_json(tiny, run_cli, "-c", "16", "-b", "1", "--no-flops")
    code, out, _ = run_cli("profile", "-m", tiny, "--device", "cpu", "--repeats", "1", "--csv", "-c", "16",
                            "-b", "1", "--no-flops")
    assert code == 0
    (parsed,) = list(csv.DictReader(out.splitlines()))
    assert set(parsed) == set(rows[0])
    assert int(parsed["cache_bytes_measured"]) == rows[0]["cache_bytes_measured"]


def test_table_names_the_slice(tiny, run_cli):
    code, out, _ = run_cli("profile", "-m", tiny, "--device", "cpu", "--repeats", "1", "--no-flops", "--layers", "1",
                            "-c", "16")
    assert code == 0
    assert "first 1 of 2 layers" in out and "kvplan profile" in out


def test_prefill_too_large_still_times_decode(tiny, tmp_path, monkeypatch):
    from kvplan.profilers import measure

    real = measure._prefill

    def prefill(net, tokens, settings, out):
        if tokens.shape == (2, 24):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(net, tokens, settings, out)

    monkeypatch.setattr(measure, "_prefill", prefill)
    rows = sweep.run(_sweep(tiny), str(tmp_path / "results.csv"), progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["does not fit (measured) in prefill (decode step measured)"]
    last = rows[-1]
    assert last.get("prefill_seconds_measured") is None and last.get("prefill_flops_counted_measured") is None
    assert last["decode_seconds_measured"] > 0 and last["decode_flops_measured"] == last["decode_flops_estimate"]


def test_missing_out_folder_is_one_line_and_creates_nothing(tiny, tmp_path, run_cli):
    missing = tmp_path / "no" / "such"
    for command in (["profile", "-m", tiny, "--device", "cpu", "-c", "16"], ["calibrate", "--device", "cpu"]):
        code, out, err = run_cli(*command, "--out", str(missing / "x.csv"))
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and "does not exist" in err and str(missing) in err
    assert not (tmp_path / "no").exists()
    from kvplan.units import InputError

    with pytest.raises(InputError, match="does not exist"):
        store.ResultsFile(missing / "x.csv", sweep.COLUMNS, resume=False)


# Bytes of the tiny GQA model's rows at batch 1 x context 16 on the CPU (fp32 weights and activations, bf16 cache):
# weights per layer: 2 norms 2*64 + q 64*64 + k, v 2*(64*32) + o 64*64 + gate, up, down 3*64*128 = 36992 params;
# embedding + LM head + final norm 2*256*64 + 64 = 32832 params; 4 bytes each.
# cache per layer: (K, V) 2 x 2 heads x 16 x 2 bytes x 16 tokens = 2048.
# prefill peak: 16 tokens x 4 bytes x max(attention 2*64 + 3*4*16 + 3*2*16, feed-forward 2*64 + 3*128)
# = 16 x 4 x 512 = 32768, plus the last token's fp32 logits 256 x 4 = 1024.
ONE_LAYER_BYTES = (36992 + 32832) * 4 + 2048 + 32768 + 1024  # 315136
TWO_LAYER_BYTES = (2 * 36992 + 32832) * 4 + 2 * 2048 + 32768 + 1024  # 465152


def test_cpu_row_too_large_is_refused_before_any_network(tiny, run_cli, monkeypatch):
    from kvplan.profilers import memory
    from kvplan.profilers import measure

    def no_build(*args, **kwargs):
        raise AssertionError("a network was built for a row that cannot fit")

    monkeypatch.setattr(measure, "build_network", no_build)
    # 420000 bytes free: the 2-layer row (465152) cannot fit; a suggested slice keeps 20% headroom,
    # 0.8 x 420000 = 336000 >= 315136, so one layer is suggested.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 420_000)
    code, out, err = run_cli("profile", "-m", tiny, "--device", "cpu", "-c", "16", "-b", "1")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("kvplan: error:")
    assert "--layers 1" in err and "on the CPU" in err
    # Below one layer's bytes even a slice cannot help: the message says to shrink the row instead.
    monkeypatch.setattr(memory, "available_bytes", lambda device: ONE_LAYER_BYTES // 2)
    code, _, err = run_cli("profile", "-m", tiny, "--device", "cpu", "-c", "16", "-b", "1")
    assert code == 2 and "lower --batch or --context" in err


def test_cpu_row_that_fits_runs(tiny, run_cli, monkeypatch):
    from kvplan.profilers import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: TWO_LAYER_BYTES)  # exactly enough
    (row,) = profile_json(tiny, run_cli, "-c", "16", "-b", "1", "--no-flops")
    assert row["status"] == "ok"
    monkeypatch.setattr(memory, "available_bytes", lambda device: TWO_LAYER_BYTES - 1)
    code, _, err = run_cli("profile", "-m", tiny, "--device", "cpu", "-c", "16", "-b", "1")
    assert code == 2 and "--layers 1" in err


def test_cuda_rows_too_large_still_run(tiny, monkeypatch):
    # On a GPU an out-of-memory error ends only its row (recorded as does not fit), so nothing is refused:
    # the check only warns. No GPU is touched: the device object is never used to allocate here.
    from kvplan.profilers import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    plan = _sweep(tiny, settings=Settings(device=torch.device("cuda"), dtype=torch.bfloat16, repeats=1))
    assert "4 row(s) need more than" in memory.check_memory(plan)


def test_decode_timing_waits_only_on_a_gpu_and_runs_steady_steps():
    from kvplan.profilers import timing

    cpu = torch.device("cpu")
    assert timing.settle(cpu) == 0.0  # no clocks to wait for
    calls = []
    made = timing.run_for(lambda: calls.append(1), cpu, 0.02)
    assert made == len(calls) >= 1
