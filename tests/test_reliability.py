"""Every bad or odd input a new user tried: one line on stderr and exit status 2 (or, where the input means
something, exit 0 and a warning saying what was assumed), the Python API's InputError naming its argument,
and tables that never cut a number at 80, 100 or 120 columns."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kvplan
from kvplan.units import InputError

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256,
        "max_position_embeddings": 4096, "tie_word_embeddings": False}
GPU_FIGURES = {"memory_bytes": 80e9, "bandwidth_bytes_per_s": 3e12, "bf16_flops": 1e15, "fp8_flops": 2e15,
               "link_bytes_per_s": 4e11, "usd_per_hour": 2.0}


@pytest.fixture
def files(tmp_path):
    """name -> path of the odd files the cases below read."""
    def config(name: str, **change) -> str:
        path = tmp_path / f"{name}.json"
        text = json.dumps({**TINY, **change}).replace('"NAN"', "NaN").replace('"INF"', "Infinity")
        path.write_text(text)
        return str(path)

    (tmp_path / "binary.bin").write_bytes(bytes(range(256)))
    (tmp_path / "partial-gpu.json").write_text(json.dumps({"name": "new-gpu", "memory_bytes": 80e9}))
    (tmp_path / "complete-gpu.json").write_text(json.dumps({"name": "new-gpu", **GPU_FIGURES}))
    (tmp_path / "h200-price.json").write_text(json.dumps({"name": "h200", "usd_per_hour": 3.0}))
    return {
        "tiny": config("tiny"), "nan": config("nan", hidden_size="NAN"), "inf": config("inf", intermediate_size="INF"),
        "huge-layers": config("huge-layers", num_hidden_layers=1e12),
        "head-dim-0-by-division": config("h0", hidden_size=8, num_attention_heads=32, num_key_value_heads=32,
                                         head_dim=None),
        "head-dim-0": config("hd0", head_dim=0), "positions-0": config("p0", max_position_embeddings=0),
        "negative": config("neg", hidden_size=-64), "fraction": config("frac", intermediate_size=127.5),
        "text": config("text", vocab_size="256"), "binary": str(tmp_path / "binary.bin"),
        "partial-gpu": str(tmp_path / "partial-gpu.json"), "complete-gpu": str(tmp_path / "complete-gpu.json"),
        "h200-price": str(tmp_path / "h200-price.json"), "folder": str(tmp_path),
        "unwritable": "/proc/kvplan-results.csv", "missing-folder": str(tmp_path / "no" / "such.csv"),
    }


M = ["--model", "llama-3.1-8b"]
CPU = ["--device", "cpu", "--repeats", "1", "--no-flops", "-c", "16"]

# (command line with {file} names, text the one stderr line holds). Each exits 2.
REFUSED = [
    # overflow and odd numbers
    (["estimate", *M, "--context", "1e309"], "--context '1e309' is beyond 1,099,511,627,776"),
    (["estimate", *M, "--reserve", "1e309"], "--reserve '1e309' is beyond"),
    (["estimate", *M, "--memory", "1e309"], "--memory '1e309' is beyond"),
    (["estimate", *M, "--gpu-set", "memory_bytes=1e309"], "memory_bytes '1e309' is beyond"),
    (["estimate", *M, "--attention", "window:1e309"], "window '1e309' is beyond"),
    (["cost", *M, "--context", "1e309"], "--context '1e309' is beyond"),
    (["budget", *M, "--context", "1e309"], "--context '1e309' is beyond"),
    (["recommend", *M, "--context", "1e309"], "--context '1e309' is beyond"),
    (["estimate", *M, "--context", "1e30"], "--context '1e30' is beyond"),
    (["estimate", *M, "--context", "1.5"], "--context must be a whole number"),
    (["estimate", *M, "--batch", "nan"], "--batch must be a number such as"),
    (["estimate", *M, "--reserve", "0.5"], "--reserve '0.5' is not a whole number of bytes; give a unit"),
    (["estimate", *M, "--gpus", "9999999"], "--gpus 9999999 is beyond"),
    (["estimate", *M, "--gpu-set", "gpus_per_node=2.5"], "gpus_per_node must be a whole number"),
    (["estimate", *M, "--usd-per-hour", "inf"], "usd_per_hour must be a positive finite number"),
    # config.json
    (["estimate", "--model", "{nan}"], "field 'hidden_size' must be a whole number, not nan"),
    (["estimate", "--model", "{inf}"], "field 'intermediate_size' must be a whole number, not inf"),
    (["estimate", "--model", "{huge-layers}"], "field 'num_hidden_layers' is beyond 65,536"),
    (["estimate", "--model", "{head-dim-0-by-division}"],
     "hidden_size (8) / num_attention_heads (32) gives head_dim 0"),
    (["estimate", "--model", "{head-dim-0}"], "field 'head_dim' must be positive, not 0"),
    (["estimate", "--model", "{positions-0}"], "field 'max_position_embeddings' must be positive, not 0"),
    (["estimate", "--model", "{negative}"], "field 'hidden_size' must be positive, not -64"),
    (["estimate", "--model", "{fraction}"], "field 'intermediate_size' must be a whole number, not 127.5"),
    (["estimate", "--model", "{text}"], "field 'vocab_size' must be a whole number, not '256'"),
    (["estimate", "--model", "{binary}"], "not valid JSON"),
    (["budget", "--model", "{nan}"], "must be a whole number, not nan"),
    (["cost", "--model", "{huge-layers}"], "is beyond 65,536"),
    # hardware files
    (["estimate", *M, "--hardware-profile", "{binary}"], "is not valid JSON"),
    (["estimate", *M, "--hardware-profile", "{folder}"], "is a folder"),
    (["estimate", *M, "--hardware-profile", "{partial-gpu}"], "describes a new GPU 'new-gpu' but lacks "
                                                             "bandwidth_bytes_per_s, bf16_flops, fp8_flops"),
    # nothing named
    (["estimate", *M, "--attention", ""], "--attention '' names no attention kind"),
    (["estimate", *M, "--attention", ","], "--attention ',' names no attention kind"),
    (["estimate", "--model", ""], "--model must name a preset"),
    (["estimate", "--model", " "], "--model must name a preset"),
    (["estimate", *M, "--kv-dtype", ","], "--kv-dtype names no format"),
    # one rule for --json with --csv
    (["estimate", *M, "--json", "--csv"], "give --json or --csv, not both"),
    (["budget", *M, "--json", "--csv"], "not both"),
    (["models", "--json", "--csv"], "not both"),
    (["profile", "--model", "{tiny}", *CPU, "--json", "--csv"], "not both"),
    (["calibrate", "--device", "cpu", "--usd-per-hour", "1", "--json", "--csv"], "not both"),
    # messages
    (["estimate", *M, "--attention", "mha:kv_heads=4"], "unknown option(s) kv_heads; allowed: none"),
    (["estimate", *M, "--attention", "mla,kv_lora_rank=256"], "did you mean mla:kv_lora_rank=256?"),
    (["estimate", *M, "--attention", "gqa:kv_heads=4,kv_heads=8"], "kv_heads is given twice"),
    (["estimate", *M, "--attention", "dsa:index_topk=2.5"], "index_topk must be a whole number"),
    # outputs checked before anything is measured
    (["profile", "--model", "{tiny}", *CPU, "--out", "{unwritable}"], "cannot write in /proc"),
    (["profile", "--model", "{tiny}", *CPU, "--out", "{folder}"], "is a folder; give a file name in it"),
    (["profile", "--model", "{tiny}", *CPU, "--out", "{missing-folder}"], "does not exist"),
    (["profile", "--model", "{tiny}", *CPU, "--resume", "--out", "{binary}"], "is not a CSV text file"),
    (["calibrate", "--device", "cpu", "--usd-per-hour", "1", "--out", "{unwritable}"], "cannot write in /proc"),
    (["calibrate", "--device", "cpu", "--usd-per-hour", "1", "--out", "{folder}"], "is a folder"),
    (["calibrate", "--device", "cpu", "--usd-per-hour", "-1"], "--usd-per-hour must be a positive price"),
    # the terminal
    (["estimate", *M, "--json", "true"], "unexpected extra argument"),
]


@pytest.mark.parametrize("args,needle", REFUSED)
def test_bad_input_is_one_line_and_exit_2(args, needle, files, run_cli):
    code, out, err = run_cli(*(arg.format(**files) for arg in args))
    assert code == 2 and out == "", err
    lines = err.splitlines()
    assert len([line for line in lines if "error:" in line]) == 1 and lines[-1].startswith("kvplan: error: "), err
    assert needle in lines[-1], err
    assert "Traceback" not in err and "internal error" not in err


# (command line, text of the warning, check of the --json rows): accepted, and the warning says what is assumed.
WARNED = [
    (["estimate", *M, "--block-size", "8192", "--context", "4k"],
     "block size 8192 exceeds the context 4096: each sequence holds one whole 8192-token block per layer",
     lambda rows: rows[0]["kv_cache_bytes"] == 32 * 8192 * 2 * 8 * 128 * 2),
    (["cost", *M, "--chunk", "64k", "--context", "4k", "--points", "2"],
     "the priced prefill chunk (65,536 tokens per sequence) is longer than the context (4,096)",
     lambda rows: all(row["chunk"] == 65536 for row in rows)),
    (["estimate", *M, "--gpus", "4096"], "tp=4096 is more GPUs than its 32 attention heads",
     lambda rows: rows[0]["tp"] == 4096),
    (["estimate", "--model", "{tiny}", "--hardware-profile", "{complete-gpu}"],
     "new GPU 'new-gpu'): defaults for what the file leaves out: attention_efficiency=each operation's own "
     "(kernels), bandwidth_efficiency=each operation's own (kernels), compute_efficiency=each operation's own "
     "(kernels), gpus_per_node=8, kernels=the H100 SXM's per-operation fractions, network_bytes_per_s=5e+10",
     lambda rows: rows[0]["gpu"] == "new-gpu" and rows[0]["gpu_memory_bytes"] == 80 * 10**9),
]


@pytest.mark.parametrize("args,needle,holds", WARNED)
def test_odd_input_is_estimated_with_a_warning(args, needle, holds, files, run_cli):
    code, out, err = run_cli(*(arg.format(**files) for arg in args), "--json")
    assert code == 0, err
    assert needle in err and err.count("\n") == 1 and err.startswith("kvplan: warning: ")
    assert holds(json.loads(out))


def test_exact_counts_are_read_exactly(run_json, files):
    (row,) = run_json("estimate", *M, "--context", "1e6")
    assert row["context"] == 10**6  # an exact integer, no float artefact
    (row,) = run_json("estimate", *M, "--attention", "dsa:index_topk=1e9", "--context", "1e9")
    assert row["context"] == 10**9 and row["attention"] == "dsa(topk=1000000000)"
    (row,) = run_json("estimate", *M, "--reserve", "0.5GiB", "--memory", "79.5GiB")
    assert row["gpu_memory_bytes"] == 79.5 * 2**30
    # A profile naming a preset takes that preset's other figures, not the --gpu default's.
    (row,) = run_json("estimate", *M, "--hardware-profile", files["h200-price"])
    assert row["gpu"] == "h200" and row["gpu_memory_bytes"] == kvplan.hardware.GPUS["h200"].memory_bytes


@pytest.mark.parametrize("arguments,argument", [
    (dict(model=None), "model"), (dict(model=""), "model"), (dict(model=3), "model"),
    (dict(context=True), "context"), (dict(context=0), "context"), (dict(context="1e309"), "context"),
    (dict(context=float("nan")), "context"), (dict(context=[]), "context"), (dict(batch=2.5), "batch"),
    (dict(block_size=-1), "block_size"), (dict(block_size="sixteen"), "block_size"), (dict(gpus=0), "gpus"),
    (dict(pp=True), "pp"), (dict(prefill_chunk=-5), "prefill_chunk"), (dict(reserve=0.5), "reserve"),
    (dict(flash="no"), "flash"), (dict(attention=""), "attention"), (dict(attention=5), "attention"),
    (dict(kv_dtype="fp9"), "kv_dtype"), (dict(weight_dtype="none"), "weight_dtype"), (dict(gpu=""), "gpu"),
    (dict(prompt=0), "prompt"), (dict(hardware_profile=7), "hardware_profile"),
])
def test_python_api_raises_input_error_naming_its_argument(arguments, argument):
    with pytest.raises(InputError) as raised:
        kvplan.estimate(**{"model": "llama-3.1-8b", **arguments})
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith(argument) or f"{argument} " in str(raised.value), str(raised.value)
    assert "--" not in str(raised.value).split(":")[0]  # the API's name, not a flag


def test_python_api_takes_whole_floats_and_numeric_text():
    assert kvplan.estimate("llama-3.1-8b", context=4096.0)["context"] == 4096
    assert kvplan.estimate("llama-3.1-8b", block_size="16")["kv_cache_bytes"] == \
        kvplan.estimate("llama-3.1-8b", block_size=16)["kv_cache_bytes"]


def test_ctrl_c_says_interrupted_and_exits_130(run_cli, monkeypatch):
    import kvplan.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kvplan.api, "estimate_report", interrupted)
    code, out, err = run_cli("estimate", *M)
    assert code == 130 and err == "kvplan: interrupted\n"


def test_ctrl_c_keeps_finished_profile_rows(files, tmp_path):
    from kvplan.profilers import store

    out = tmp_path / "rows.csv"
    args = [sys.executable, "-m", "kvplan", "profile", "--model", files["tiny"], "--device", "cpu", "--repeats", "1",
            "--no-flops", "-c", ",".join(str(16 * i) for i in range(1, 40)), "-b", "1,2", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(store.read_rows(out)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.rstrip().endswith("kvplan: interrupted")
    assert len(store.read_rows(out)) >= 2 and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


# --- the terminal -----------------------------------------------------------------------------------------

COMMANDS = ["estimate", "models", "gpus", "budget", "recommend", "cost", "profile", "calibrate"]


def test_help_flags_and_version(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for command in [[]] + [[c] for c in COMMANDS]:
        code, out, _ = run_cli(*command, "-h")
        assert code == 0 and "Usage: kvplan" in out
        assert run_cli(*command, "--help")[1] == out
        assert "<bool>" not in out and "…" not in out and max(len(line) for line in out.splitlines()) <= 80
        if command:
            assert "--json" in out and "--csv" in out, command
    code, out, _ = run_cli("--version")
    assert code == 0 and out == f"kvplan {kvplan.__version__}\n"


def test_gpus_lists_the_aliases(run_cli):
    rows = json.loads(run_cli("gpus", "--json")[1])
    aliases = {alias for row in rows for alias in row["aliases"].split(", ") if alias}
    assert {"h100", "a100", "4090", "mi300"} <= aliases
    assert "4090" in run_cli("gpus")[1]


def test_readme_options_name_both_chunks():
    text = README.read_text()
    assert "| `--prefill-chunk 8k` |" in text and "`--chunk-per-sequence 8k` (`--chunk`)" in text


def _words(cell: str) -> list[str]:
    from rich.text import Text

    return Text.from_markup(cell).plain.split()


def _rendered(capsys, rows, columns, width, title=None, caption=None) -> str:
    from kvplan.output import print_table

    print_table(rows, columns, title, caption, width=width)
    return capsys.readouterr().out


def _every_number_whole(out: str, rows, columns) -> None:
    """Every word of every cell (numbers among them) stands whole in `out`, between spaces or rules."""
    assert "…" not in out
    for row in rows:
        for header, fn in columns:
            for word in _words(fn(row)):
                assert re.search(rf"(?:^|[\s│┃]){re.escape(word)}(?=$|[\s│┃])", out, re.M), (header, word, out)


ESTIMATES = [
    dict(model="llama-3.1-8b", context=131072),
    dict(model="llama-3.1-8b", context=131072, attention=["native", "mha", "mqa", "mla", "tpa", "dsa", "window:4096"]),
    dict(model="deepseek-v3.2-exp", gpu="h800", gpus=16, weight_dtype="fp8", kv_dtype="fp8", context=131072,
         attention=["native", "mla"]),
    dict(model="gemma-3-27b", context=[4096, 131072], batch=[1, 64], kv_dtype=["bf16", "fp8"]),
]


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("case", range(len(ESTIMATES)))
def test_estimate_table_never_cuts_a_number(case, wide, width, capsys):
    from kvplan.output import estimate_columns

    arguments = dict(ESTIMATES[case])
    frame = kvplan.estimate(**arguments)
    rows = [frame] if isinstance(frame, dict) else frame.to_dict("records")
    columns, title = estimate_columns(rows, wide)
    out = _rendered(capsys, rows, columns, width, title, "caption")
    _every_number_whole(out, rows, columns)
    if not wide and case == 0:  # the common case fits the terminal: at 100 columns and up, as one table
        assert max(len(line) for line in out.splitlines()) <= width
        assert ("┃ model" in out) == (width >= 100)


@pytest.mark.parametrize("width", [80, 100, 120])
def test_every_command_table_never_cuts_a_number(width, capsys):
    from kvplan.presets import preset_rows
    from kvplan.budget import budget_report
    from kvplan.cli import estimate, planning
    from kvplan.costcurve import cost_report
    from kvplan.hardware import gpu_rows
    from kvplan.recommend import recommend_report

    deployment = dict(model="llama-3.1-8b", gpu="h100", attention=["mla", "tpa"])
    budget = budget_report(deployment, 1, 131072)
    cost = cost_report(deployment, 131072)
    advice = recommend_report({"model": "llama-3.1-8b", "gpu": "h100"}, 131072, 16, None, None, 2, 5)
    for rows, columns in ((preset_rows(), estimate.MODEL_COLUMNS), (gpu_rows(), estimate.GPU_COLUMNS),
                          (budget.rows, planning.BUDGET_COLUMNS), (cost.table_rows, planning.COST_COLUMNS),
                          (advice.rows[:5], planning.RECOMMEND_COLUMNS)):
        out = _rendered(capsys, rows, columns, width)
        _every_number_whole(out, rows, columns)


def test_table_turns_when_few_rows_are_wide(capsys):
    from kvplan.output import ESTIMATE_COLUMNS

    row = kvplan.estimate("llama-3.1-8b")
    out = _rendered(capsys, [row], ESTIMATE_COLUMNS, 80)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "│ activations GiB │" in out  # headers down the left, one column for the row
