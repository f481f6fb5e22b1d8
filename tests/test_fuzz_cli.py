"""Random command lines and random config.json files: every run ends in exit status 0 or 2, never a traceback
or an "internal error" (hypothesis)."""

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvplan.cli import main
from kvplan.presets import PRESETS

CONFIGS = Path(__file__).parent / "configs"
# KVPLAN_FUZZ_EXAMPLES=5000 searches longer than the suite's default.
EXAMPLES = int(os.environ.get("KVPLAN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `kvplan ARGS` in this process, at 100 columns."""
    out, err = io.StringIO(), io.StringIO()
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as stop:
                code = 0 if stop.code is None else stop.code
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return code, out.getvalue(), err.getvalue()


def check(args: list[str]) -> None:
    code, out, err = run(args)
    assert code in (0, 2), (args, code, err)
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    if code == 2:  # bad input: one line, nothing on stdout
        assert err.endswith("\n") and "error:" in err.splitlines()[-1] and out == "", (args, err, out)
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, (args, err)


# Values a user might type, and values no one should: sizes with and without units, huge, negative, not a
# number, empty, several at once, a different type altogether.
numbers = st.one_of(st.integers(-5, 10**6).map(str), st.sampled_from(
    ["0", "1", "8", "4k", "128k", "1M", "1e6", "1.5e6", "1e30", "1e309", "-1", "1.5", "0.5", "nan", "inf", "-inf", "",
     ",", "4k,", ",4k", "4k,32k", "k", "1e", "١٢", "0x10", "1_000", "2**10", " 4096 ", "4 k", "3.0"]))
sizes = st.one_of(numbers, st.sampled_from(["80GiB", "141GB", "0GiB", "1e309GiB", "0.5GiB", "2TiB", "1e20", "lots"]))
specs = st.sampled_from(["", ",", "native", "mha", "mqa", "gqa", "gqa:kv_heads=4", "gqa:kv_heads=3", "gqa:kv_heads=0",
                         "mha:kv_heads=4", "mla", "mla,kv_lora_rank=256", "mla:kv_lora_rank=1e309", "tpa:q_rank=1e3",
                         "tpa:k_rank=2,v_rank=2", "dsa", "dsa:index_topk=1e9", "window:4096", "window:0", "window:",
                         "window:4k,global_every=0", "banana", "kv_lora_rank=256", "gqa:kv_heads=4,kv_heads=8", ":"])
FLAGS = {
    "--context": numbers, "--batch": numbers, "--prompt": numbers, "--gpus": numbers, "--pp": numbers,
    "--dp": numbers, "--ep": numbers, "--gpus-per-node": numbers, "--block-size": numbers, "--prefill-chunk": numbers,
    "--memory": sizes, "--reserve": sizes,
    "--kv-dtype": st.sampled_from(["bf16", "fp8", "int4", "fp9", "", ",", "bf16,int8"]),
    "--weight-dtype": st.sampled_from(["bf16", "fp8", "int4", "none"]), "--attention": specs,
    "--gpu": st.sampled_from(["h100", "h200", "mi300", "4090", "", "auto-ish", "a100-40gb"]),
    "--usd-per-hour": numbers, "--compute-efficiency": numbers, "--bandwidth-efficiency": numbers,
    "--gpu-set": st.sampled_from(["memory_bytes=80GiB", "memory_bytes=1e309", "usd_per_hour=-1", "bf16_flops=nan",
                                  "gpus_per_node=2.5", "colour=red", "=", "name=x", "fp8_flops=0"]),
}
COMMANDS = {"estimate": [], "budget": [], "cost": ["--points", "3"], "recommend": ["--top", "2", "--max-changes", "1"]}
MODELS = ["llama-3.1-8b", "deepseek-v3.2-exp", "gemma-3-27b", "mixtral-8x7b", "modernbert-base", "t6-medium", ""]


@FUZZ
@given(st.sampled_from(sorted(COMMANDS)), st.sampled_from(MODELS),
       st.lists(st.sampled_from(sorted(FLAGS)).flatmap(lambda flag: FLAGS[flag].map(lambda value: [flag, value])),
                max_size=3),
       st.sampled_from([[], ["--json"], ["--csv"], ["--json", "--csv"], ["--wide"]]))
def test_random_flags_exit_0_or_2(command, model, flags, output):
    if command == "recommend" and any(flag in ("--attention", "--wide") for flag, _ in flags):
        flags = [pair for pair in flags if pair[0] != "--attention"]
    if "--wide" in output and command != "estimate":
        output = []
    check([command, "--model", model] + COMMANDS[command] + [part for pair in flags for part in pair] + output)


# config.json mutations: a field set to NaN, infinity, a huge, negative, zero or fractional number, another type,
# or removed; lists of layers given odd entries.
BASES = ["llama-3.1-8b", "deepseek-v3", "deepseek-v3.2-exp", "gemma-3-27b", "qwen3-30b-a3b", "llama-4-scout",
         "gpt-oss-20b", "modernbert-base", "glm-4.5-air", "mixtral-8x7b"]
DELETE = object()
odd_values = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e12, 2**70, 1e308, -1, -4096, 0, 0.5, 7.25,
                              "32", "", None, True, [], [1, 2], {}, {"a": 1}, DELETE])


def base_config(name: str) -> dict:
    folder = CONFIGS / name
    if folder.is_dir():
        return json.loads((folder / "config.json").read_text())
    return dict(PRESETS[name][0])


@FUZZ
@given(st.sampled_from(BASES), st.data(), st.sampled_from(["estimate", "budget"]))
def test_random_config_json_exit_0_or_2(name, data, command):
    config = base_config(name)
    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    keys = sorted(inner)
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        value = data.draw(odd_values)
        if value is DELETE:
            del inner[key]
        elif isinstance(inner[key], list) and data.draw(st.booleans()):  # an odd entry inside a list
            inner[key] = list(inner[key]) + [value]
        else:
            inner[key] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(config))  # NaN and Infinity as JSON's non-standard literals, as some files hold
        check([command, "--model", str(path), "--context", "4k"])


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(["--hardware-profile", "--model"]))
def test_random_bytes_as_a_file_exit_0_or_2(content, flag):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file.json"
        path.write_bytes(content)
        args = ["estimate", "--model", "llama-3.1-8b", flag, str(path)]
        code, out, err = run(args)
        assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, (content, err)


api_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 2**45), st.floats(), numbers, st.text(max_size=4),
                       st.lists(st.integers(1, 4096), max_size=2), specs)
API_ARGUMENTS = ["context", "batch", "prompt", "block_size", "gpus", "tp", "pp", "dp", "ep", "gpus_per_node",
                 "reserve", "prefill_chunk", "attention", "kv_dtype", "weight_dtype", "gpu", "flash", "overlap",
                 "usd_per_hour", "model"]


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(st.dictionaries(st.sampled_from(API_ARGUMENTS), api_values, max_size=3))
def test_random_python_api_arguments_raise_only_input_error(arguments):
    import warnings

    import kvplan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what is estimated anyway is warned about; only errors matter here
        try:
            kvplan.estimate(**{"model": "llama-3.1-8b", **arguments})
        except kvplan.InputError:
            pass
